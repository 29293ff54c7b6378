//! Weight averaging: EMA against its formula, torch's SWALR sequence, SWA's equal average in the
//! training loop, resume with an average bit for bit, and update_bn's recomputed statistics.

mod scratch;

use candle_core::{Device, Tensor, Var};
use descent_train::average::{lerp, update_bn, Anneal, AverageConfig, AverageKind, Swalr, WeightAverage};
use descent_train::checkpoint::Checkpoint;
use descent_train::data::Dataset;
use descent_train::model::{Init, LinearRegression, Mlp, Model};
use descent_train::resnet::ResNet;
use descent_train::rng::Rng;
use descent_train::train::{train_from, EpochEnd, EpochMetrics, Loss, TrainConfig};

fn values(v: &Var) -> Vec<f32> {
    v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn set(v: &Var, x: &[f32]) {
    v.set(&Tensor::from_vec(x.to_vec(), v.dims(), &Device::Cpu).unwrap()).unwrap();
}

fn ema(decay: f64, warmup: bool) -> AverageConfig {
    AverageConfig { kind: AverageKind::Ema { decay, warmup }, use_buffers: false }
}

/// The first update copies; each later one is `decay·ema + (1 − decay)·w` (torch's lerp form,
/// bit for bit, its branch chosen by the weight; the textbook form to rounding). With the warm-up the decay of update n + 1 is
/// min(decay, (1 + n)/(10 + n)).
#[test]
fn ema_follows_its_formula() {
    let model = Mlp::new(Init::TorchDefault, 0.0, &mut Rng::new(3), &Device::Cpu).unwrap();
    for warmup in [false, true] {
        let decay = 0.9;
        let mut avg = WeightAverage::new(ema(decay, warmup)).unwrap();
        let vars = model.named_vars();
        let mut expected: Vec<Vec<f32>> = vec![];
        let mut rng = Rng::new(7);
        for n in 0..6u64 {
            for (_, v) in &vars {
                let x: Vec<f32> = (0..v.elem_count()).map(|_| rng.normal()).collect();
                set(v, &x);
            }
            let d = if warmup { decay.min((1.0 + n as f64) / (10.0 + n as f64)) } else { decay };
            assert_eq!(avg.ema_decay(), Some(d));
            avg.update(&model).unwrap();
            for (k, (_, v)) in vars.iter().enumerate() {
                let w = values(v);
                if n == 0 {
                    expected.push(w);
                    continue;
                }
                for (e, &x) in expected[k].iter_mut().zip(&w) {
                    let textbook = d * *e as f64 + (1.0 - d) * x as f64;
                    // torch's lerp with weight 1 − decay: from `ema` below ½, from `w` above.
                    let w = (1.0 - d) as f32;
                    *e = if w < 0.5 { *e + w * (x - *e) } else { x - (x - *e) * (1.0 - w) };
                    assert!((*e as f64 - textbook).abs() <= 1e-6 * (1.0 + textbook.abs()), "{e} vs {textbook}");
                }
            }
            assert_eq!(avg.n_averaged, n + 1);
            for (a, e) in avg.params.iter().zip(&expected) {
                assert_eq!(a, e, "update {n}, warm-up {warmup}");
            }
        }
        // Swapped in and out: the model's own weights come back, bit for bit.
        let before: Vec<Vec<f32>> = vars.iter().map(|(_, v)| values(v)).collect();
        let seen = avg
            .with_averaged(&model, |m| Ok(m.named_vars().iter().map(|(_, v)| values(v)).collect::<Vec<_>>()))
            .unwrap();
        assert_eq!(seen, expected);
        assert_eq!(vars.iter().map(|(_, v)| values(v)).collect::<Vec<_>>(), before);
    }
    assert!(WeightAverage::new(ema(1.5, false)).is_err());
    assert!(WeightAverage::new(ema(f64::NAN, false)).is_err());
}

/// torch's `lerp` for the equal average: a weight of ½ or more takes the `end − (end − a)(1 − w)`
/// branch.
#[test]
fn lerp_is_torchs() {
    assert_eq!(lerp(1.0, 3.0, 0.25), 1.0 + 0.25 * 2.0);
    assert_eq!(lerp(1.0, 3.0, 0.5), 3.0 - 2.0 * 0.5);
    assert_eq!(lerp(0.1, 0.7, 1.0 / 3.0), 0.1 + (1.0f32 / 3.0) * (0.7 - 0.1));
}

/// SWALR's rates against torch's formula: lr_k = swa_lr·α_k + lr₀·(1 − α_k) with
/// α_k = f(min(1, k/anneal_epochs)), f the cosine (1 − cos πt)/2 or linear curve; with 0 anneal
/// epochs the constructor already sets swa_lr.
#[test]
fn swalr_follows_torch() {
    for (anneal, f) in [
        (Anneal::Cos, (|t: f64| (1.0 - (std::f64::consts::PI * t).cos()) / 2.0) as fn(f64) -> f64),
        (Anneal::Linear, |t| t),
    ] {
        for epochs in [1usize, 3, 10] {
            let (lr0, swa) = (0.1, 0.02);
            let mut s = Swalr::new(lr0, swa, epochs, anneal);
            assert_eq!(s.lr, lr0, "the constructor's step leaves the rate");
            for k in 1..=15u64 {
                let lr = s.step();
                let alpha = f((k as f64 / epochs as f64).min(1.0));
                let want = swa * alpha + lr0 * (1.0 - alpha);
                assert!((lr - want).abs() < 1e-15, "{anneal:?} {epochs} step {k}: {lr} vs {want}");
            }
            assert_eq!(s.lr, swa);
        }
    }
    // Hand values: cos over 3 epochs from 0.1 to 0.05.
    let mut s = Swalr::new(0.1, 0.05, 3, Anneal::Cos);
    let got: Vec<f64> = (0..4).map(|_| s.step()).collect();
    for (g, w) in got.iter().zip([0.0875, 0.0625, 0.05, 0.05]) {
        assert!((g - w).abs() < 1e-15, "{got:?}");
    }
    let mut s = Swalr::new(0.1, 0.05, 0, Anneal::Cos);
    assert_eq!(s.lr, 0.05);
    assert_eq!(s.step(), 0.05);
}

fn regression_cfg(epochs: usize, average: Option<AverageConfig>) -> TrainConfig {
    TrainConfig { average, seed: 5, ..TrainConfig::new("torch.sgd", Some(0.05), epochs, 50, Loss::Mse) }
}

fn model_bits(m: &dyn Model) -> Vec<Vec<u32>> {
    m.named_vars().iter().map(|(_, v)| values(v).iter().map(|x| x.to_bits()).collect()).collect()
}

/// A run with an EMA stopped after one epoch (its checkpoint saved to a file and loaded) and
/// resumed to three ends with the weights, the average and the metrics of a run never stopped,
/// bit for bit.
#[test]
fn resume_with_ema_is_bit_exact() {
    let data = Dataset::regression(300, &mut Rng::new(1)).unwrap();
    let test = Dataset::regression(100, &mut Rng::new(2)).unwrap();
    let cfg = |epochs| regression_cfg(epochs, Some(ema(0.95, true)));
    let whole = LinearRegression::new(Init::TorchDefault, &mut Rng::new(0), &Device::Cpu).unwrap();
    let mut last: Option<Checkpoint> = None;
    let (h_whole, _) = train_from(&whole, &data, &test, &cfg(3), None, |_: &EpochMetrics, e: &mut EpochEnd| {
        last = Some(e.checkpoint()?);
        Ok(())
    })
    .unwrap();
    let dir = scratch::Scratch::new("average", "checkpoint");
    let path = dir.join("checkpoint.safetensors");
    let first = LinearRegression::new(Init::TorchDefault, &mut Rng::new(0), &Device::Cpu).unwrap();
    train_from(&first, &data, &test, &cfg(1), None, |_: &EpochMetrics, e: &mut EpochEnd| e.checkpoint()?.save(&path))
        .unwrap();
    let ck = Checkpoint::load(&path).unwrap();
    let avg = ck.average.as_ref().expect("the checkpoint keeps the average");
    assert_eq!((avg.kind.as_str(), avg.n_averaged), ("ema", 6));
    let resumed = LinearRegression::new(Init::TorchDefault, &mut Rng::new(9), &Device::Cpu).unwrap();
    let mut end: Option<Checkpoint> = None;
    let (h_res, _) = train_from(&resumed, &data, &test, &cfg(3), Some(&ck), |_: &EpochMetrics, e: &mut EpochEnd| {
        end = Some(e.checkpoint()?);
        Ok(())
    })
    .unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!(model_bits(&whole), model_bits(&resumed));
    let (a, b) = (last.unwrap().average.unwrap(), end.unwrap().average.unwrap());
    assert_eq!(a.n_averaged, 18);
    assert_eq!(a, b, "the averages agree bit for bit");
    let avg_metrics =
        |h: &[EpochMetrics]| h.iter().map(|m| m.average.clone().unwrap().test_loss.to_bits()).collect::<Vec<_>>();
    assert_eq!(avg_metrics(&h_whole[1..]), avg_metrics(&h_res));
    // Resuming without the average, or with one the checkpoint lacks, is refused.
    let fresh = LinearRegression::new(Init::TorchDefault, &mut Rng::new(0), &Device::Cpu).unwrap();
    let plain = regression_cfg(3, None);
    let e = train_from(&fresh, &data, &test, &plain, Some(&ck), |_: &EpochMetrics, _: &mut EpochEnd| Ok(()));
    assert!(e.unwrap_err().to_string().contains("ema"));
}

/// SWA in the training loop: the average is the equal mean of the weights at the end of each
/// epoch from `start` on, and from the end of epoch `start` the learning rate follows SWALR.
#[test]
fn swa_averages_epoch_ends_and_anneals_the_rate() {
    let data = Dataset::regression(200, &mut Rng::new(1)).unwrap();
    let test = Dataset::regression(50, &mut Rng::new(2)).unwrap();
    let swa = AverageConfig {
        kind: AverageKind::Swa { start: 2, swa_lr: 0.01, anneal_epochs: 2, anneal: Anneal::Linear },
        use_buffers: false,
    };
    let cfg = regression_cfg(4, Some(swa));
    let model = LinearRegression::new(Init::TorchDefault, &mut Rng::new(0), &Device::Cpu).unwrap();
    let mut ends: Vec<Vec<f32>> = vec![];
    let mut last: Option<Checkpoint> = None;
    let (h, _) = train_from(&model, &data, &test, &cfg, None, |_: &EpochMetrics, e: &mut EpochEnd| {
        let ck = e.checkpoint()?;
        ends.push(ck.weights.iter().flat_map(|w| w.2.clone()).collect());
        last = Some(ck);
        Ok(())
    })
    .unwrap();
    assert!(h[0].average.is_none(), "nothing averaged before epoch 2");
    assert_eq!(h[3].average.as_ref().unwrap().n_averaged, 3);
    let avg = last.unwrap().average.unwrap();
    let stored: Vec<f32> = avg.weights.iter().flat_map(|w| w.2.clone()).collect();
    for (i, s) in stored.iter().enumerate() {
        let mean = (ends[1][i] as f64 + ends[2][i] as f64 + ends[3][i] as f64) / 3.0;
        assert!((*s as f64 - mean).abs() < 1e-6, "{s} vs {mean}");
    }
    // Epochs 1–2 at 0.05, then SWALR from 0.05 towards 0.01 over 2 epochs (linear): 0.03, 0.01.
    let lrs: Vec<f64> = h.iter().map(|m| m.lr.unwrap()).collect();
    assert!((lrs[0] - 0.05).abs() < 1e-12 && (lrs[1] - 0.05).abs() < 1e-12, "{lrs:?}");
    assert!((lrs[2] - 0.03).abs() < 1e-9 && (lrs[3] - 0.01).abs() < 1e-9, "{lrs:?}");
    let swalr = avg.swalr.unwrap();
    assert_eq!(swalr.step_count, 4);
}

fn images(n: usize, seed: u64) -> Dataset {
    let mut rng = Rng::new(seed);
    let x: Vec<f32> = (0..n * 64).map(|_| rng.normal() * 0.5 + 0.2).collect();
    let y: Vec<u32> = (0..n as u32).map(|i| i % 10).collect();
    Dataset {
        x: Tensor::from_vec(x, (n, 1, 8, 8), &Device::Cpu).unwrap(),
        y: Tensor::from_vec(y, n, &Device::Cpu).unwrap(),
    }
}

/// A user's model: a descent batch norm, or the functional one with buffers of its own, beside a
/// buffer that is not a running statistic (a fixed input scale).
struct UserNet {
    bn: descent_train::nn::BatchNorm,
    scale: Var,
    /// Training-mode forward passes, a buffer the forward writes (as an observer would).
    calls: Var,
    functional: bool,
}

impl Model for UserNet {
    fn forward(&self, x: &Tensor, mode: descent_train::model::Mode, _: &mut Rng) -> descent_train::Result<Tensor> {
        let x = x.broadcast_mul(self.scale.as_tensor())?;
        if mode == descent_train::model::Mode::Train {
            self.calls.set(&(self.calls.as_tensor() + 1.0)?)?;
        }
        if !self.functional {
            return self.bn.forward(&x, mode);
        }
        let options = descent_train::nn::BatchNormOptions {
            training: mode == descent_train::model::Mode::Train,
            ..Default::default()
        };
        let (w, b) = (self.bn.weight.as_tensor(), self.bn.bias.as_tensor());
        descent_train::nn::batch_norm(&x, &self.bn.running_mean, &self.bn.running_var, w, b, options)
    }
    fn named_vars(&self) -> Vec<(String, Var)> {
        vec![("bn.weight".into(), self.bn.weight.clone()), ("bn.bias".into(), self.bn.bias.clone())]
    }
    fn named_buffers(&self) -> Vec<(String, Var)> {
        let mut b: Vec<(String, Var)> =
            self.bn.named_buffers().into_iter().map(|(n, v)| (format!("bn.{n}"), v)).collect();
        b.push(("scale".into(), self.scale.clone()));
        b.push(("calls".into(), self.calls.clone()));
        b
    }
}

/// update_bn recomputes running statistics only (a user's other buffer stays as it was, as
/// torch's touches only its `_BatchNorm` modules), and only through descent's batch norm: a model
/// whose statistics are another layer's (which would not take the cumulative average) is refused
/// with its buffers as they were.
#[test]
fn update_bn_leaves_other_buffers_and_refuses_batch_norms_it_cannot_drive() {
    let data = images(16, 5);
    for functional in [false, true] {
        let net = UserNet {
            bn: descent_train::nn::BatchNorm::new(1, &Device::Cpu).unwrap(),
            scale: Var::from_vec(vec![0.5f32], 1, &Device::Cpu).unwrap(),
            calls: Var::from_vec(vec![0.0f32], 1, &Device::Cpu).unwrap(),
            functional,
        };
        set(&net.bn.running_mean, &[0.25]);
        let before: Vec<Vec<f32>> = net.named_buffers().iter().map(|(_, v)| values(v)).collect();
        descent_train::average::check_update_bn(&net, &data, 16).ok();
        let probed: Vec<Vec<f32>> = net.named_buffers().iter().map(|(_, v)| values(v)).collect();
        assert_eq!(probed, before, "functional {functional}: the check changed the buffers");
        let out = update_bn(&net, &data, 16, 0);
        assert_eq!(values(&net.scale), [0.5], "functional {functional}: the scale buffer was reset");
        // Asked before a run that would need it at its end, the buffers left as they were.
        let ask = descent_train::average::check_update_bn(&net, &data, 16);
        assert_eq!(ask.is_err(), functional, "{ask:?}");
        if functional {
            let e = out.expect_err("refused").to_string();
            assert!(e.contains("bn.running_mean") && e.contains("nn::BatchNorm"), "{e}");
            let after: Vec<Vec<f32>> = net.named_buffers().iter().map(|(_, v)| values(v)).collect();
            assert_eq!(after, before, "a refused update_bn changed the buffers");
        } else {
            assert_eq!(out.unwrap(), 1);
            // One batch: its own mean, of the scaled images.
            let x = data.x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mean = x.iter().map(|v| v * 0.5).sum::<f32>() / x.len() as f32;
            assert!(
                (values(&net.bn.running_mean)[0] - mean).abs() < 1e-5,
                "{:?} vs {mean}",
                values(&net.bn.running_mean)
            );
        }
    }
}

/// update_bn resets the running statistics and recomputes them as the cumulative average of the
/// batches' statistics: one batch gives that batch's statistics, two the mean of both.
#[test]
fn update_bn_recomputes_the_running_statistics() {
    let model = ResNet::new(6, 4, Init::TorchDefault, &mut Rng::new(1), &Device::Cpu).unwrap();
    let stats = |m: &ResNet| -> Vec<Vec<f32>> { m.named_buffers().iter().map(|(_, v)| values(v)).collect() };
    let before = stats(&model);
    let (a, b) = (images(16, 3), images(16, 4));
    assert_eq!(update_bn(&model, &a, 16, 0).unwrap(), 1);
    let sa = stats(&model);
    assert_ne!(sa, before, "update_bn changes the running statistics");
    assert_eq!(update_bn(&model, &a, 16, 0).unwrap(), 1);
    assert_eq!(stats(&model), sa, "reset first: the same data gives the same statistics");
    // The first batch norm sees the input through the (unchanged) stem: its statistics are
    // exactly the cumulative mean of the two batches'.
    update_bn(&model, &b, 16, 0).unwrap();
    let sb = stats(&model);
    let both = Dataset { x: Tensor::cat(&[&a.x, &b.x], 0).unwrap(), y: Tensor::cat(&[&a.y, &b.y], 0).unwrap() };
    assert_eq!(update_bn(&model, &both, 16, 0).unwrap(), 2);
    let sab = stats(&model);
    for k in 0..2 {
        for ((x, y), z) in sa[k].iter().zip(&sb[k]).zip(&sab[k]) {
            let mean = (x + y) / 2.0;
            assert!((z - mean).abs() <= 1e-5 * (1.0 + mean.abs()), "{z} vs {mean}");
        }
    }
    // The model's momentum is back: a training forward moves the statistics by 0.1 again.
    let names: Vec<String> = model.named_buffers().iter().map(|(n, _)| n.clone()).collect();
    assert!(names.iter().any(|n| n.ends_with("running_var")));
}
