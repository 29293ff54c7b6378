//! The character-level GPT against PyTorch (every `gpt*` file of shared/reference-nn-r2/models:
//! logits, loss, every gradient, one AdamW step with nanoGPT's weight-decay groups), then training,
//! sampling, checkpoints and bad input. Pass rule as in reference_nn_r2.rs: each tensor
//! `max|ours − ref| ≤ rel·max|ref| + abs` (1e-4 and 1e-6 unless the file's `tolerance` says otherwise
//! for that field, `min_abs_grad` keeping only elements whose recorded gradient is that large); the
//! losses to 1e-5 relative.

mod common;
mod scratch;

use std::collections::BTreeSet;
use std::path::PathBuf;

use candle_core::{Device, Tensor, Var};
use descent_core::spec::build_optimizer;
use descent_train::gpt::{generate, Gpt, GptConfig};
use descent_train::model::{Mode, Model};
use descent_train::nn::Gelu;
use descent_train::rng::Rng;
use descent_train::text::{CharCorpus, TextSplit};
use descent_train::VarOptimizer;
use serde_json::{json, Value};

use common::{tensor, values, Check};

fn reference_dir() -> PathBuf {
    common::reference_nn_r2().join("models")
}

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data")
}

fn shakespeare() -> CharCorpus {
    CharCorpus::load(data_dir().join("tinyshakespeare/input.txt")).unwrap()
}

fn ints(v: &Value) -> Vec<u32> {
    v["data"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// The file's configuration, after checking that it is a model [`Gpt`] builds.
fn config(file: &str, case: &Value) -> GptConfig {
    let c = &case["config"];
    let n = |k: &str| c[k].as_u64().unwrap_or_else(|| panic!("{file}: config.{k}")) as usize;
    assert_eq!(c["bias"], json!(true), "{file}: every Linear has a bias");
    assert_eq!(c["tied"], json!(true), "{file}: output projection tied to the embedding");
    assert_eq!(c["dropout"].as_f64(), Some(0.0), "{file}: no dropout");
    let gelu = match c["gelu"].as_str().unwrap_or("none") {
        "none" => Gelu::Erf,
        "tanh" => Gelu::Tanh,
        other => panic!("{file}: GELU `{other}`"),
    };
    GptConfig {
        gelu,
        layer_norm_eps: c["layer_norm_eps"].as_f64().unwrap_or(1e-5),
        ..GptConfig::new(n("vocab_size"), n("block_size"), n("n_layer"), n("n_head"), n("n_embd"))
    }
}

fn names(v: &Value) -> BTreeSet<String> {
    v.as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()).collect()
}

fn check_gpt(k: &mut Check, corpus: &CharCorpus) {
    let (file, case) = (k.file, k.case);
    let cfg = config(file, case);
    assert_eq!(case["vocab"].as_str().unwrap().chars().collect::<Vec<_>>(), corpus.vocab, "{file}: vocabulary");
    let b = &case["batch"];
    assert_eq!(b["file"].as_str(), Some("tinyshakespeare/input.txt"), "{file}: the text");
    let offsets: Vec<usize> = b["offsets"].as_array().unwrap().iter().map(|o| o.as_u64().unwrap() as usize).collect();
    assert_eq!(b["length"].as_u64(), Some(cfg.block_size as u64 + 1), "{file}: windows of block_size + 1");
    let (x, y) = corpus.batch_at(TextSplit::Train, &offsets, cfg.block_size).unwrap();
    assert_eq!(x.flatten_all().unwrap().to_vec1::<u32>().unwrap(), ints(&b["x"]), "{file}: batch x");
    assert_eq!(y.flatten_all().unwrap().to_vec1::<u32>().unwrap(), ints(&b["y"]), "{file}: batch y");

    let model = Gpt::from_tensors(cfg, |n| case["params"].get(n).map(tensor)).unwrap();
    let named = model.named_vars();
    let ours: BTreeSet<String> = named.iter().map(|(n, _)| n.clone()).collect();
    let recorded: BTreeSet<String> = case["params"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(ours, recorded, "{file}: parameter names");
    assert_eq!(named.len(), recorded.len(), "{file}: a parameter listed twice");

    let logits = model.forward(&x, Mode::Train, &mut Rng::new(0)).unwrap();
    k.close("logits", None, &logits);
    let loss = Gpt::loss(&logits, &y).unwrap();
    k.close_scalar("loss", loss.to_scalar::<f32>().unwrap());
    let mut grads = loss.backward().unwrap();
    assert_eq!(case["grads"].as_object().unwrap().len(), named.len(), "{file}: a gradient this test does not check");
    for (n, v) in &named {
        k.close("grads", Some(n), grads.get(v.as_tensor()).unwrap());
    }

    // One AdamW step, nanoGPT's groups: decay on tensors of two or more dimensions.
    let o = &case["optimizer"];
    assert_eq!(o["type"].as_str(), Some("AdamW"), "{file}: optimizer");
    assert_eq!(o["steps"].as_u64(), Some(1), "{file}: one step");
    assert!(!o["amsgrad"].as_bool().unwrap_or(false) && !o["maximize"].as_bool().unwrap_or(false));
    let (decay, no_decay) = (names(&o["decay"]), names(&o["no_decay"]));
    let by_rank: BTreeSet<String> = named.iter().filter(|(_, v)| v.rank() >= 2).map(|(n, _)| n.clone()).collect();
    assert_eq!(decay, by_rank, "{file}: the decay group is the tensors of two or more dimensions");
    let by_pattern: BTreeSet<String> = named
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| Gpt::no_decay_groups().iter().any(|(pat, _)| n.contains(pat.as_str())))
        .collect();
    assert_eq!(no_decay, by_pattern, "{file}: Gpt::no_decay_groups selects the no-decay group");
    let f = |key: &str| o[key].as_f64().unwrap();
    let betas = (o["betas"][0].as_f64().unwrap(), o["betas"][1].as_f64().unwrap());
    let mut opt_cfg = Gpt::optimizer_config(f("lr"), betas, f("weight_decay"));
    opt_cfg.hparams["eps"] = json!(f("eps"));
    let before: Vec<Tensor> = named.iter().map(|(_, v)| v.as_tensor().copy().unwrap()).collect();
    let mut opt = VarOptimizer::for_vars(named.clone(), &opt_cfg).unwrap();
    assert!(opt.step(&grads).unwrap());
    for ((n, v), b) in named.iter().zip(&before) {
        k.close("adamw_update", Some(n), &(v.as_tensor() - b).unwrap());
    }
    let after = Gpt::loss(&model.forward(&x, Mode::Eval, &mut Rng::new(0)).unwrap(), &y).unwrap();
    k.close_scalar("loss_after_adamw_step", after.to_scalar::<f32>().unwrap());

    // The same step through torch's param_groups by index gives the same numbers, bit for bit.
    let twin = Gpt::from_tensors(cfg, |n| case["params"].get(n).map(tensor)).unwrap();
    let twin_vars = twin.named_vars();
    let idx = |set: &BTreeSet<String>| -> Vec<usize> {
        (0..named.len()).filter(|&i| set.contains(&named[i].0)).collect::<Vec<_>>()
    };
    let groups = json!([
        {"params": idx(&decay), "hparams": {"weight_decay": f("weight_decay")}},
        {"params": idx(&no_decay), "hparams": {"weight_decay": 0.0}},
    ]);
    let h = json!({"lr": f("lr"), "betas": [betas.0, betas.1], "eps": f("eps")});
    let shapes: Vec<Vec<usize>> = twin_vars.iter().map(|(_, v)| v.dims().to_vec()).collect();
    let tx = build_optimizer("torch", "adamw", &h, Some(&groups), &shapes).unwrap();
    let mut twin_opt = VarOptimizer::new(twin_vars.clone(), tx).unwrap();
    for ((_, v), (_, t)) in named.iter().zip(&twin_vars) {
        let g = grads.get(v.as_tensor()).unwrap().clone();
        grads.insert(t.as_tensor(), g);
    }
    twin_opt.step(&grads).unwrap();
    for ((n, a), (_, b)) in named.iter().zip(&twin_vars) {
        assert_eq!(values(a.as_tensor()), values(b.as_tensor()), "{file}: {n} by param_groups");
    }
}

#[test]
fn every_gpt_file_matches_pytorch() {
    let mut files: Vec<String> = std::fs::read_dir(reference_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("gpt") && n.ends_with(".json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no gpt reference files");
    let corpus = shakespeare();
    let mut failures = vec![];
    for f in &files {
        let case: Value = serde_json::from_str(&std::fs::read_to_string(reference_dir().join(f)).unwrap()).unwrap();
        let mut k = Check::new(f, &case);
        check_gpt(&mut k, &corpus);
        failures.extend(k.failures.into_iter().map(|e| format!("{f} {e}")));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn tiny(vocab: usize, seed: u64) -> Gpt {
    Gpt::new(GptConfig::new(vocab, 16, 2, 2, 32), &mut Rng::new(seed), &Device::Cpu).unwrap()
}

fn std_of(v: &Var) -> f64 {
    let x = values(v.as_tensor());
    let m = x.iter().map(|&a| a as f64).sum::<f64>() / x.len() as f64;
    (x.iter().map(|&a| (a as f64 - m).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
}

/// nanoGPT's initialization: N(0, 0.02²), the residual projections scaled by 1/√(2·n_layer), zero
/// biases, LayerNorm weight 1; seeded.
#[test]
fn initialization_is_nanogpts_and_seeded() {
    let cfg = GptConfig::new(65, 64, 4, 4, 128);
    let m = Gpt::new(cfg, &mut Rng::new(3), &Device::Cpu).unwrap();
    for (n, v) in m.named_vars() {
        let x = values(v.as_tensor());
        if n.contains("ln_") && n.ends_with(".weight") {
            assert!(x.iter().all(|&a| a == 1.0), "{n}");
        } else if n.ends_with(".bias") {
            assert!(x.iter().all(|&a| a == 0.0), "{n}");
        } else {
            let want = if n.ends_with("c_proj.weight") { 0.02 / 8f64.sqrt() } else { 0.02 };
            assert!((std_of(&v) / want - 1.0).abs() < 0.05, "{n}: std {} against {want}", std_of(&v));
        }
    }
    // 12·n_layer·C² + (vocab + block)·C for the matrices, plus the biases and LayerNorms.
    assert_eq!(m.num_params(), 12 * 4 * 128 * 128 + (65 + 64) * 128 + 4 * (13 * 128) + 2 * 128);
    let again = Gpt::new(cfg, &mut Rng::new(3), &Device::Cpu).unwrap();
    for ((n, a), (_, b)) in m.named_vars().iter().zip(again.named_vars()) {
        assert_eq!(values(a.as_tensor()), values(b.as_tensor()), "{n}");
    }
}

/// A tiny GPT on the first 100 000 characters: 100 AdamW steps bring the training and validation
/// losses from uniform (ln 65 ≈ 4.17) well below what character frequencies alone give (3.29 nats
/// on this text), so the model uses the context.
#[test]
fn a_tiny_gpt_learns_shakespeare() {
    let text = std::fs::read_to_string(data_dir().join("tinyshakespeare/input.txt")).unwrap();
    let corpus = CharCorpus::from_text(&text[..100_000], "tiny-shakespeare, first 100 000 characters").unwrap();
    let model = tiny(corpus.vocab_size(), 1);
    let mut opt = VarOptimizer::for_vars(model.named_vars(), &Gpt::optimizer_config(1e-2, (0.9, 0.99), 0.1)).unwrap();
    let mut rng = Rng::new(2);
    let val_loss = |model: &Gpt| {
        let (x, y) = corpus.batch(TextSplit::Val, 32, 16, &mut Rng::new(9)).unwrap();
        Gpt::loss(&model.forward(&x, Mode::Eval, &mut Rng::new(0)).unwrap(), &y).unwrap().to_scalar::<f32>().unwrap()
    };
    let val_before = val_loss(&model);
    let mut losses = vec![];
    for _ in 0..100 {
        let (x, y) = corpus.batch(TextSplit::Train, 16, 16, &mut rng).unwrap();
        let loss = Gpt::loss(&model.forward(&x, Mode::Train, &mut rng).unwrap(), &y).unwrap();
        losses.push(loss.to_scalar::<f32>().unwrap());
        opt.backward_step(&loss).unwrap();
    }
    let (first, last) = (losses[0], losses[95..].iter().sum::<f32>() / 5.0);
    let val_after = val_loss(&model);
    eprintln!("train loss {first} → {last}, validation {val_before} → {val_after}");
    assert!((first - (corpus.vocab_size() as f32).ln()).abs() < 0.2, "starts near uniform: {first}");
    assert!(last < 2.85 && val_after < 2.9, "train {last}, validation {val_after}");
}

/// Dropout: off in evaluation (the output equals the model's without dropout), seeded in
/// training, and the attention path with dropout computes the fused attention's values.
#[test]
fn dropout_is_seeded_and_only_in_training() {
    let base = tiny(20, 4);
    let x = Tensor::from_vec((0..32u32).map(|i| (i * 7) % 20).collect::<Vec<_>>(), (2, 16), &Device::Cpu).unwrap();
    let with = |p: f32| Gpt { config: GptConfig { dropout: p, ..base.config }, ..base.clone() };
    let plain = values(&base.forward(&x, Mode::Train, &mut Rng::new(0)).unwrap());
    let d = with(0.2);
    assert_eq!(values(&d.forward(&x, Mode::Eval, &mut Rng::new(0)).unwrap()), plain);
    let a = values(&d.forward(&x, Mode::Train, &mut Rng::new(5)).unwrap());
    assert_eq!(a, values(&d.forward(&x, Mode::Train, &mut Rng::new(5)).unwrap()));
    assert_ne!(a, plain);
    // With a vanishing probability nothing is dropped: the composed attention gives the fused
    // op's values and gradients.
    let tiny_p = with(1e-9);
    let y = tiny_p.forward(&x, Mode::Train, &mut Rng::new(5)).unwrap();
    let scale = plain.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = values(&y).iter().zip(&plain).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err <= 1e-5 * scale, "composed attention differs by {err}");
    let t = Tensor::from_vec((1..33u32).map(|i| i % 20).collect::<Vec<_>>(), (2, 16), &Device::Cpu).unwrap();
    let g1 = Gpt::loss(&y, &t).unwrap().backward().unwrap();
    let g2 = Gpt::loss(&base.forward(&x, Mode::Train, &mut Rng::new(0)).unwrap(), &t).unwrap().backward().unwrap();
    for (n, v) in base.named_vars() {
        let (a, b) = (values(g1.get(v.as_tensor()).unwrap()), values(g2.get(v.as_tensor()).unwrap()));
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = a.iter().zip(&b).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= 1e-4 * scale + 1e-7, "{n}: gradient differs by {err} (scale {scale})");
    }
    assert!(Gpt::new(GptConfig { dropout: 1.5, ..base.config }, &mut Rng::new(0), &Device::Cpu).is_err());
}

/// Sampling: the same seed gives the same text, another seed another; the context is cropped to
/// the block size; the temperature and the prompt are checked.
#[test]
fn sampling_is_seeded() {
    let corpus = shakespeare();
    let model = tiny(corpus.vocab_size(), 5);
    let prompt = corpus.encode("ROMEO:\nWhat light through yonder window breaks?").unwrap();
    assert!(prompt.len() > model.config.block_size);
    let run = |seed: u64, temp: f64| generate(&model, &prompt, 40, temp, &mut Rng::new(seed)).unwrap();
    let a = run(7, 1.0);
    assert_eq!(a.len(), prompt.len() + 40);
    assert_eq!(a[..prompt.len()], prompt[..]);
    assert_eq!(a, run(7, 1.0));
    assert_ne!(a, run(8, 1.0));
    assert!(a.iter().all(|&t| (t as usize) < corpus.vocab_size()));
    eprintln!("{:?}", corpus.decode(&a[prompt.len()..]).unwrap());
    // A very low temperature is the argmax at each step.
    let greedy = run(1, 1e-6);
    assert_eq!(greedy, run(2, 1e-6));
    for bad in [0.0, -1.0, f64::NAN] {
        assert!(generate(&model, &prompt, 1, bad, &mut Rng::new(0)).unwrap_err().to_string().contains("temperature"));
    }
    assert!(generate(&model, &[], 1, 1.0, &mut Rng::new(0)).is_err());
}

/// The optimizer's checkpoint of a GPT restores its weights into another GPT of the same shape.
#[test]
fn checkpoints_round_trip() {
    let corpus = shakespeare();
    let model = tiny(corpus.vocab_size(), 6);
    let mut opt = VarOptimizer::for_vars(model.named_vars(), &Gpt::optimizer_config(1e-3, (0.9, 0.95), 0.1)).unwrap();
    let (x, y) = corpus.batch(TextSplit::Train, 4, 16, &mut Rng::new(1)).unwrap();
    opt.backward_step(&Gpt::loss(&model.forward(&x, Mode::Train, &mut Rng::new(0)).unwrap(), &y).unwrap()).unwrap();
    let dir = scratch::Scratch::new("gpt", "checkpoint");
    let path = dir.join("checkpoint.safetensors");
    opt.save_checkpoint(&path).unwrap();
    let other = tiny(corpus.vocab_size(), 99);
    let mut other_opt =
        VarOptimizer::for_vars(other.named_vars(), &Gpt::optimizer_config(1e-3, (0.9, 0.95), 0.1)).unwrap();
    other_opt.load_checkpoint(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let out = |m: &Gpt| values(&m.forward(&x, Mode::Eval, &mut Rng::new(0)).unwrap());
    assert_eq!(out(&model), out(&other));
    assert_eq!(other_opt.steps(), 1);
}

/// One-line errors naming the file, the character, the token or the length.
#[test]
fn bad_input_is_an_error_naming_it() {
    let dir = scratch::Scratch::new("gpt", "text");
    let latin1 = dir.join("latin1.txt");
    std::fs::write(&latin1, b"caf\xe9 au lait").unwrap();
    let e = CharCorpus::load(&latin1).unwrap_err().to_string();
    assert!(e.contains("latin1.txt") && e.contains("not UTF-8") && e.contains("0xe9") && !e.contains('\n'), "{e}");
    let e = CharCorpus::load(dir.join("missing.txt")).unwrap_err().to_string();
    assert!(e.contains("missing.txt") && !e.contains('\n'), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();

    let corpus = shakespeare();
    let e = corpus.encode("To be, or not to be: that is the question — Hamlet").unwrap_err().to_string();
    assert!(e.contains("'—'") && e.contains("U+2014") && e.contains("input.txt") && !e.contains('\n'), "{e}");
    assert!(corpus.encode("#").unwrap_err().to_string().contains("'#'"));

    let model = tiny(corpus.vocab_size(), 0);
    let long = Tensor::zeros((1, 17), candle_core::DType::U32, &Device::Cpu).unwrap();
    let e = model.forward(&long, Mode::Eval, &mut Rng::new(0)).unwrap_err().to_string();
    assert!(e.contains("17 tokens") && e.contains("block size is 16"), "{e}");
    let out_of_vocab = Tensor::from_vec(vec![3u32, 65], (1, 2), &Device::Cpu).unwrap();
    let e = model.forward(&out_of_vocab, Mode::Eval, &mut Rng::new(0)).unwrap_err().to_string();
    assert!(e.contains("index 65") && e.contains("65-row"), "{e}");
    assert!(Gpt::new(GptConfig::new(65, 16, 2, 3, 32), &mut Rng::new(0), &Device::Cpu).is_err());
}

/// The split of tiny-shakespeare: nanoGPT's 1 003 854 training and 111 540 validation characters
/// over its 65-character vocabulary; random windows are seeded.
#[test]
fn the_shakespeare_corpus_is_nanogpts() {
    let c = shakespeare();
    assert_eq!((c.train.len(), c.val.len(), c.vocab_size()), (1_003_854, 111_540, 65));
    assert_eq!(
        c.vocab.iter().collect::<String>(),
        "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    );
    assert_eq!(c.decode(&c.train[..14]).unwrap(), "First Citizen:");
    let draw = |seed| c.batch(TextSplit::Val, 3, 8, &mut Rng::new(seed)).unwrap();
    let ((x1, y1), (x2, _)) = (draw(4), draw(4));
    let (x1, y1, x2) = (x1.to_vec2::<u32>().unwrap(), y1.to_vec2::<u32>().unwrap(), x2.to_vec2::<u32>().unwrap());
    assert_eq!(x1, x2);
    for (x, y) in x1.iter().zip(&y1) {
        assert_eq!(x[1..], y[..7], "y is x shifted by one");
    }
}

/// Forward and backward at nanoGPT's CPU recipe size (4 layers, 4 heads, 128 wide, block 64,
/// batch 12): `CANDLE_NUM_THREADS=1 cargo test --release -p descent-train --test gpt -- --ignored
/// --nocapture`. One candle elementwise thread, as `descent` sets it: with more, candle's pool spins
/// on its barrier after each large add (the residual stream and the gradient sums), which took
/// two thirds of the backward on a 2-core machine.
#[test]
#[ignore]
fn recipe_step_timing() {
    let corpus = shakespeare();
    let model = Gpt::new(GptConfig::new(65, 64, 4, 4, 128), &mut Rng::new(0), &Device::Cpu).unwrap();
    let mut rng = Rng::new(1);
    let mut opt = VarOptimizer::for_vars(model.named_vars(), &Gpt::optimizer_config(1e-3, (0.9, 0.99), 0.1)).unwrap();
    let (mut fwd, mut bwd, mut step) = (0.0, 0.0, 0.0);
    let n = 30;
    for i in 0..n + 5 {
        let (x, y) = corpus.batch(TextSplit::Train, 12, 64, &mut rng).unwrap();
        let t0 = std::time::Instant::now();
        let loss = Gpt::loss(&model.forward(&x, Mode::Train, &mut rng).unwrap(), &y).unwrap();
        let t1 = std::time::Instant::now();
        let grads = loss.backward().unwrap();
        let t2 = std::time::Instant::now();
        opt.step(&grads).unwrap();
        let t3 = std::time::Instant::now();
        if i >= 5 {
            fwd += (t1 - t0).as_secs_f64();
            bwd += (t2 - t1).as_secs_f64();
            step += (t3 - t2).as_secs_f64();
        }
    }
    let ms = |s: f64| 1e3 * s / n as f64;
    eprintln!(
        "{} parameters; per step: forward {:.2} ms, backward {:.2} ms, AdamW {:.2} ms",
        model.num_params(),
        ms(fwd),
        ms(bwd),
        ms(step)
    );
}

/// The configuration a checkpoint keeps reads back as it was written; a malformed one is refused.
#[test]
fn the_config_round_trips_as_json() {
    let c = GptConfig { dropout: 0.1, gelu: Gelu::Tanh, ..GptConfig::new(65, 64, 4, 4, 128) };
    assert_eq!(GptConfig::from_json(&c.to_json()).unwrap(), c);
    let mut v = c.to_json();
    v["n_head"] = json!(3);
    assert!(GptConfig::from_json(&v).unwrap_err().to_string().contains("heads"));
    v["n_head"] = json!("four");
    assert!(GptConfig::from_json(&v).unwrap_err().to_string().contains("n_head"));
    assert!(GptConfig::from_json(&json!({"model": "lenet"})).unwrap_err().to_string().contains("model"));
}

/// Top-k keeps the k most likely tokens (k = 1: the argmax whatever the seed); the context can be
/// shorter than the block but not longer.
#[test]
fn top_k_and_context() {
    use descent_train::gpt::{generate_with, Sampling};
    let corpus = shakespeare();
    let model = tiny(corpus.vocab_size(), 8);
    let prompt = corpus.encode("ROMEO:").unwrap();
    let top1 = |seed| {
        let s = Sampling { temperature: 1.0, top_k: Some(1), context: None };
        generate_with(&model, &prompt, 20, &s, &mut Rng::new(seed)).unwrap()
    };
    let greedy = generate(&model, &prompt, 20, 1e-6, &mut Rng::new(0)).unwrap();
    assert_eq!(top1(1), greedy);
    assert_eq!(top1(2), greedy);
    let s = Sampling { temperature: 1.0, top_k: Some(65), context: Some(4) };
    assert_eq!(generate_with(&model, &prompt, 5, &s, &mut Rng::new(3)).unwrap().len(), prompt.len() + 5);
    let long = Sampling { context: Some(17), ..s };
    let e = generate_with(&model, &prompt, 1, &long, &mut Rng::new(0)).unwrap_err().to_string();
    assert!(e.contains("17") && e.contains("position table has 16"), "{e}");
    let zero = Sampling { top_k: Some(0), ..s };
    assert!(generate_with(&model, &prompt, 1, &zero, &mut Rng::new(0)).is_err());
}

/// `GptConfig::param_shapes` lists what `named_vars` holds, without building the model; and
/// `Gpt::from_tensors` checks the tensors against the configuration before it builds one: a
/// configuration whose position table would take 2⁴⁰ rows is refused by the tensor it
/// contradicts, not attempted.
#[test]
fn a_configuration_is_checked_against_the_tensors_before_the_model_is_built() {
    for (vocab, block, layers, heads, width) in [(65, 64, 4, 4, 128), (7, 5, 1, 2, 6), (3, 2, 3, 1, 4)] {
        let c = GptConfig::new(vocab, block, layers, heads, width);
        let model = Gpt::new(c, &mut Rng::new(1), &Device::Cpu).unwrap();
        let ours: Vec<(String, Vec<usize>)> =
            model.named_vars().into_iter().map(|(n, v)| (n, v.as_tensor().dims().to_vec())).collect();
        assert_eq!(c.param_shapes().collect::<Vec<_>>(), ours);
    }
    let c = GptConfig::new(7, 5, 1, 2, 6);
    let model = Gpt::new(c, &mut Rng::new(1), &Device::Cpu).unwrap();
    let stored: Vec<(String, Tensor)> =
        model.named_vars().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
    let get = |name: &str| stored.iter().find(|(n, _)| n == name).map(|(_, t)| t.clone());
    let back = Gpt::from_tensors(c, get).unwrap();
    assert_eq!(back.num_params(), model.num_params());
    let huge = GptConfig { block_size: 1 << 40, ..c };
    let e = Gpt::from_tensors(huge, get).err().expect("refused").to_string();
    assert!(e.contains("transformer.wpe.weight") && e.contains("1099511627776"), "{e}");
    let deep = GptConfig { n_layer: 1_000_000, ..c };
    let e = Gpt::from_tensors(deep, get).err().expect("refused").to_string();
    assert!(e.contains("no tensor `transformer.h.1.ln_1.weight`"), "{e}");
}
