//! Checkpoints: resuming inside an epoch is exact, a finished run stays finished, and a file that
//! was changed, holds a NaN or predates checksums is refused with the reason.

mod scratch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use descent_train::augment::Affine;
use descent_train::checkpoint::Checkpoint;
use descent_train::data::Dataset;
use descent_train::mnist;
use descent_train::model::{Init, LeNet5, LinearRegression, Mlp, Model};
use descent_train::rng::Rng;
use descent_train::train::{
    train_from, EpochEnd, EpochMetrics, Hooks, Loss, LrSchedule, StepMetrics, Stop, TrainConfig,
};

fn tmpdir(tag: &str) -> scratch::Scratch {
    scratch::Scratch::new("ck", tag)
}

/// 500 MNIST samples (10 batches of 50 an epoch), for training and testing.
fn mnist_slice() -> Dataset {
    let m = mnist::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist")).unwrap();
    let all = Dataset::mnist(&m.test, false).unwrap();
    let (x, y) = all.range(0, 500).unwrap();
    Dataset { x, y }
}

fn weights(model: &dyn Model) -> Vec<Vec<u32>> {
    model
        .named_vars()
        .iter()
        .map(|(_, v)| {
            v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
        })
        .collect()
}

/// Records every step and epoch, and saves a checkpoint at each epoch end (the last one stays).
struct Recorder {
    path: Option<PathBuf>,
    steps: Vec<StepMetrics>,
    epochs: Vec<EpochMetrics>,
    last: Option<Checkpoint>,
    all: Vec<Checkpoint>,
}

impl Recorder {
    fn new(path: Option<&Path>) -> Self {
        Recorder { path: path.map(Path::to_path_buf), steps: vec![], epochs: vec![], last: None, all: vec![] }
    }
}

impl Hooks for &mut Recorder {
    fn on_step(&mut self, s: &StepMetrics) -> descent_train::train::Control {
        self.steps.push(s.clone());
        descent_train::train::Control::Continue
    }
    fn on_epoch(&mut self, m: &EpochMetrics, end: &mut EpochEnd) -> descent_train::Result<()> {
        self.epochs.push(m.clone());
        let ck = end.checkpoint()?;
        assert_eq!(ck.mid_epoch(), end.mid_epoch());
        if let Some(p) = &self.path {
            ck.save(p)?;
        }
        self.all.push(ck.clone());
        self.last = Some(ck);
        Ok(())
    }
}

/// A run stopped by its step limit inside an epoch, saved to disk and resumed with a larger limit
/// gives the weights of a run never stopped bit for bit, and the cut epoch's metrics.
#[test]
fn resume_inside_an_epoch_is_exact() {
    let data = mnist_slice();
    let mut c = TrainConfig::new("adamw", Some(1e-3), 5, 50, Loss::CrossEntropy);
    c.clip_norm = Some(1.0);
    // The plateau scheduler steps at epoch ends only: a cut epoch must not step it.
    c.schedule = LrSchedule::Plateau { factor: 0.5, patience: 0 };
    // Dropout draws from the generator between the batches.
    let new_model = || Mlp::new(Init::TorchDefault, 0.3, &mut Rng::new(11), &Device::Cpu).unwrap();

    let full = new_model();
    let mut c20 = c.clone();
    c20.max_steps = Some(20);
    let mut rec_full = Recorder::new(None);
    let (h_full, stop) = train_from(&full, &data, &data, &c20, None, &mut rec_full).unwrap();
    assert_eq!((stop, h_full.len(), h_full[1].steps), (Stop::Steps, 2, 20));

    let dir = tmpdir("mid");
    let path = dir.join("checkpoint.safetensors");
    let first = new_model();
    let mut c13 = c.clone();
    c13.max_steps = Some(13);
    let mut rec = Recorder::new(Some(&path));
    let (h, stop) = train_from(&first, &data, &data, &c13, None, &mut rec).unwrap();
    assert_eq!((stop, h.iter().map(|m| (m.epoch, m.steps)).collect::<Vec<_>>()), (Stop::Steps, vec![(1, 10), (2, 13)]));

    let ck = Checkpoint::load(&path).unwrap();
    assert_eq!(&ck, rec.last.as_ref().unwrap());
    assert!(ck.mid_epoch());
    // The cut epoch did not step the plateau scheduler: its state is the one of epoch 1's end.
    assert_eq!(ck.scheduler, rec.all[0].scheduler);
    assert_eq!((ck.epoch, ck.steps), (1, 13));
    let p = ck.progress.as_ref().unwrap();
    assert_eq!((p.batch, p.samples), (3, 150));

    let resumed = new_model();
    let mut rec2 = Recorder::new(None);
    let (h2, stop) = train_from(&resumed, &data, &data, &c20, Some(&ck), &mut rec2).unwrap();
    assert_eq!(stop, Stop::Steps);
    assert_eq!(h2.iter().map(|m| (m.epoch, m.steps)).collect::<Vec<_>>(), vec![(2, 20)]);
    assert_eq!(weights(&full), weights(&resumed));
    // The epoch that straddles the stop has the uninterrupted run's metrics.
    assert_eq!(h2[0].train_loss.to_bits(), h_full[1].train_loss.to_bits());
    assert_eq!(h2[0].test_loss.to_bits(), h_full[1].test_loss.to_bits());
    assert_eq!(h2[0].lr_scale, h_full[1].lr_scale);
    // Its steps go on at batch 3 of epoch 2, as the uninterrupted run's did.
    let tail = |r: &Recorder| r.steps.iter().map(|s| (s.epoch, s.batch, s.step, s.loss.to_bits())).collect::<Vec<_>>();
    assert_eq!(tail(&rec2), tail(&rec_full)[13..].to_vec());
    // Both end at the same checkpoint: weights, optimizer, generator and scheduler state.
    assert_eq!(rec2.last, rec_full.last);
    assert!(!rec2.last.as_ref().unwrap().mid_epoch());

    // Another batch size cannot continue the cut epoch.
    let mut c_other = c20.clone();
    c_other.batch_size = 40;
    let e =
        train_from(&new_model(), &data, &data, &c_other, Some(&ck), &mut Recorder::new(None)).unwrap_err().to_string();
    assert!(e.contains("batch 3") && e.contains("batch size"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With augmentation, a run cut inside its second epoch and resumed takes the uninterrupted run's
/// steps bit for bit (the augmentation's draws depend on the seed, the epoch and the position
/// only), and the augmentation changes the run.
#[test]
fn resume_with_augmentation_is_exact() {
    let data = mnist_slice();
    let mut c = TrainConfig::new("adam", Some(1e-3), 3, 50, Loss::CrossEntropy);
    c.seed = 5;
    c.augment = Some(Affine::parse("translate=2,rotate=15,interp=bilinear", 0.0).unwrap());
    let new_model = || LeNet5::new(Init::TorchDefault, &mut Rng::new(3), &Device::Cpu).unwrap();

    let full = new_model();
    let mut rec_full = Recorder::new(None);
    let (h_full, _) = train_from(&full, &data, &data, &c, None, &mut rec_full).unwrap();
    assert_eq!(h_full.len(), 3);

    let first = new_model();
    let mut c17 = c.clone();
    c17.max_steps = Some(17);
    let mut rec = Recorder::new(None);
    train_from(&first, &data, &data, &c17, None, &mut rec).unwrap();
    let ck = rec.last.clone().unwrap();
    assert!(ck.mid_epoch());

    let resumed = new_model();
    let mut rec2 = Recorder::new(None);
    let (h2, stop) = train_from(&resumed, &data, &data, &c, Some(&ck), &mut rec2).unwrap();
    assert_eq!(stop, Stop::Epochs);
    assert_eq!(weights(&full), weights(&resumed));
    assert_eq!(h2.last().unwrap().test_loss.to_bits(), h_full[2].test_loss.to_bits());
    let tail = |r: &Recorder| r.steps.iter().map(|s| (s.step, s.loss.to_bits())).collect::<Vec<_>>();
    assert_eq!(tail(&rec2), tail(&rec_full)[17..].to_vec());
    assert_eq!(rec2.last, rec_full.last);

    let plain = new_model();
    let mut c_plain = c.clone();
    c_plain.augment = None;
    let mut rec_plain = Recorder::new(None);
    train_from(&plain, &data, &data, &c_plain, None, &mut rec_plain).unwrap();
    assert_ne!(weights(&plain), weights(&full));
    // Same first-batch samples, other pixels: the first losses differ.
    assert_ne!(rec_plain.steps[0].loss.to_bits(), rec_full.steps[0].loss.to_bits());
}

/// Quantization-aware training (MLP with dropout, LeNet-5) cut inside an epoch, saved to disk and
/// resumed: the weights and the observers of a run never stopped, bit for bit, and the same step
/// losses; the checkpoint holds the observers as buffers.
#[test]
fn resume_with_quantization_aware_training_is_exact() {
    use descent_train::qat::QatModel;
    let data = mnist_slice();
    let bits = |vars: Vec<(String, candle_core::Var)>| -> Vec<(String, Vec<u32>)> {
        vars.into_iter()
            .map(|(n, v)| {
                (
                    n,
                    v.as_tensor()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                        .iter()
                        .map(|x| x.to_bits())
                        .collect(),
                )
            })
            .collect()
    };
    for name in ["mlp", "lenet"] {
        let new_model = || -> QatModel {
            let mut rng = Rng::new(7);
            let (inner, p): (Box<dyn Model>, f32) = if name == "mlp" {
                (Box::new(Mlp::new(Init::TorchDefault, 0.2, &mut rng, &Device::Cpu).unwrap()), 0.2)
            } else {
                (Box::new(LeNet5::new(Init::TorchDefault, &mut rng, &Device::Cpu).unwrap()), 0.0)
            };
            QatModel::new(name, inner, p).unwrap()
        };
        let mut c = TrainConfig::new("adam", Some(1e-3), 2, 50, Loss::CrossEntropy);
        c.seed = 3;
        let full = new_model();
        let mut rec_full = Recorder::new(None);
        train_from(&full, &data, &data, &c, None, &mut rec_full).unwrap();

        let dir = tmpdir(&format!("qat-{name}"));
        let path = dir.join("checkpoint.safetensors");
        let first = new_model();
        let mut c13 = c.clone();
        c13.max_steps = Some(13);
        train_from(&first, &data, &data, &c13, None, &mut Recorder::new(Some(&path))).unwrap();
        let ck = Checkpoint::load(&path).unwrap();
        assert!(ck.mid_epoch());
        let names: Vec<&str> = ck.buffers.iter().map(|b| b.0.as_str()).collect();
        assert!(names.contains(&"fc2.input_observer.max_val") && names.len() == 2 * first.ranges().unwrap().len());

        let resumed = new_model();
        let mut rec2 = Recorder::new(None);
        train_from(&resumed, &data, &data, &c, Some(&ck), &mut rec2).unwrap();
        assert_eq!(bits(resumed.named_vars()), bits(full.named_vars()), "{name}");
        assert_eq!(bits(resumed.named_buffers()), bits(full.named_buffers()), "{name}");
        let tail = |r: &Recorder| r.steps.iter().map(|s| (s.step, s.loss.to_bits())).collect::<Vec<_>>();
        assert_eq!(tail(&rec2), tail(&rec_full)[13..].to_vec(), "{name}");
        assert_eq!(rec2.last, rec_full.last, "{name}");
        // The observers moved from their first batch: they are not the last batch's range.
        assert!(full.ranges().unwrap().iter().all(|r| r.is_some()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Resuming a run that already reached its step limit or epochs adds nothing and evaluates nothing.
#[test]
fn resuming_a_finished_run_returns_at_once() {
    let mut rng = Rng::new(3);
    let data = Dataset::regression(100, &mut rng).unwrap();
    let new_model = || LinearRegression::new(Init::TorchDefault, &mut Rng::new(1), &Device::Cpu).unwrap();
    let mut c = TrainConfig::new("adam", Some(0.05), 3, 32, Loss::Mse);
    c.max_steps = Some(6);
    let model = new_model();
    let mut rec = Recorder::new(None);
    train_from(&model, &data, &data, &c, None, &mut rec).unwrap();
    let ck = rec.last.unwrap();
    assert!(ck.mid_epoch() && ck.steps == 6);

    let again = new_model();
    let mut rec2 = Recorder::new(None);
    let (h, stop) = train_from(&again, &data, &data, &c, Some(&ck), &mut rec2).unwrap();
    assert_eq!((h.len(), stop), (0, Stop::Steps));
    assert!(rec2.epochs.is_empty() && rec2.steps.is_empty());
    assert_eq!(weights(&again), weights(&model));

    // At an epoch's end, with every epoch done.
    c.max_steps = None;
    c.epochs = 2;
    let mut rec = Recorder::new(None);
    train_from(&new_model(), &data, &data, &c, None, &mut rec).unwrap();
    let ck = rec.last.unwrap();
    assert!(!ck.mid_epoch() && ck.epoch == 2);
    let mut rec2 = Recorder::new(None);
    let (h, stop) = train_from(&new_model(), &data, &data, &c, Some(&ck), &mut rec2).unwrap();
    assert_eq!((h.len(), stop), (0, Stop::Epochs));
    assert!(rec2.epochs.is_empty());
}

/// A small saved checkpoint (linear regression, Adam, cut inside its second epoch).
fn saved(dir: &Path) -> (PathBuf, Checkpoint) {
    let mut rng = Rng::new(5);
    let data = Dataset::regression(64, &mut rng).unwrap();
    let model = LinearRegression::new(Init::TorchDefault, &mut rng, &Device::Cpu).unwrap();
    let mut c = TrainConfig::new("adam", Some(0.01), 3, 16, Loss::Mse);
    c.max_steps = Some(6);
    let mut rec = Recorder::new(None);
    train_from(&model, &data, &data, &c, None, &mut rec).unwrap();
    let mut ck = rec.last.unwrap();
    ck.run_id = "run-7f3a".into();
    ck.config_hash = "c0ffee".into();
    let path = dir.join("checkpoint.safetensors");
    ck.save(&path).unwrap();
    (path, ck)
}

/// The file's tensors and metadata, to write back altered.
fn parts(bytes: &[u8]) -> (Vec<(String, safetensors::tensor::TensorView<'_>)>, HashMap<String, String>) {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let views = st.names().iter().map(|n| (n.to_string(), st.tensor(n).unwrap())).collect();
    let (_, md) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
    (views, md.metadata().clone().unwrap())
}

#[test]
fn identity_fields_round_trip_and_capture_leaves_them_empty() {
    let dir = tmpdir("identity");
    let (path, ck) = saved(&dir);
    let back = Checkpoint::load(&path).unwrap();
    assert_eq!(back, ck);
    assert_eq!((back.run_id.as_str(), back.config_hash.as_str()), ("run-7f3a", "c0ffee"));
    let mut rec = Recorder::new(None);
    let mut rng = Rng::new(5);
    let data = Dataset::regression(32, &mut rng).unwrap();
    let model = LinearRegression::new(Init::TorchDefault, &mut rng, &Device::Cpu).unwrap();
    train_from(&model, &data, &data, &TrainConfig::new("sgd", Some(0.1), 1, 16, Loss::Mse), None, &mut rec).unwrap();
    let fresh = rec.last.unwrap();
    assert!(fresh.run_id.is_empty() && fresh.config_hash.is_empty() && !fresh.mid_epoch());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A language model's configuration and vocabulary are kept, under the checksum.
#[test]
fn model_config_and_vocabulary_round_trip_under_the_checksum() {
    let dir = tmpdir("vocab");
    let (path, mut ck) = saved(&dir);
    assert_eq!((ck.model_config.as_deref(), ck.vocab.as_deref()), (None, None));
    ck.model_config = Some(r#"{"model":"gpt","n_layer":1}"#.into());
    ck.vocab = Some("\n !'ABCabc—".into());
    ck.save(&path).unwrap();
    assert_eq!(Checkpoint::load(&path).unwrap(), ck);
    let bytes = std::fs::read(&path).unwrap();
    let (views, mut meta) = parts(&bytes);
    meta.insert("vocab".into(), "\n !'ABCabd—".into());
    std::fs::write(&path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
    assert!(Checkpoint::load(&path).unwrap_err().to_string().contains("checksum mismatch"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_changed_byte_is_a_checksum_mismatch() {
    let dir = tmpdir("flip");
    let (path, _) = saved(&dir);
    let good = std::fs::read(&path).unwrap();
    let header = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let expected =
        format!("{}: checksum mismatch: the file was modified or corrupted after it was written", path.display());
    // A flipped bit in a tensor's data, the first and the last byte of the data.
    for at in [8 + header + 5, 8 + header, good.len() - 1] {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        std::fs::write(&path, &bad).unwrap();
        assert_eq!(Checkpoint::load(&path).unwrap_err().to_string(), expected, "byte {at}");
    }
    // A metadata field changed in a well-formed file.
    let (views, mut meta) = parts(&good);
    meta.insert("steps".into(), "5".into());
    std::fs::write(&path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
    assert_eq!(Checkpoint::load(&path).unwrap_err().to_string(), expected);
    // A tensor renamed.
    let (views, meta) = parts(&good);
    let renamed: Vec<_> = views.into_iter().map(|(n, v)| (n.replace("model/", "model/x"), v)).collect();
    std::fs::write(&path, safetensors::serialize(renamed, Some(meta)).unwrap()).unwrap();
    assert_eq!(Checkpoint::load(&path).unwrap_err().to_string(), expected);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A NaN or infinity in a file whose checksum is right (written by `save`) is still refused,
/// naming the tensor and the index.
#[test]
fn non_finite_weights_or_state_are_refused() {
    let dir = tmpdir("nan");
    let (path, ck) = saved(&dir);
    let mut bad = ck.clone();
    let name = bad.weights[0].0.clone();
    assert!(!bad.weights[0].2.is_empty());
    let last = bad.weights[0].2.len() - 1;
    bad.weights[0].2[last] = f32::NAN;
    bad.save(&path).unwrap();
    let e = Checkpoint::load(&path).unwrap_err().to_string();
    assert!(e.contains(&format!("tensor `model/{name}` holds NaN at index {last}")), "{e}");

    let mut bad = ck.clone();
    let (key, buf) = bad.optimizer.buffers.iter_mut().next().unwrap();
    let key = key.clone();
    buf[0] = f32::NEG_INFINITY;
    bad.save(&path).unwrap();
    let e = Checkpoint::load(&path).unwrap_err().to_string();
    assert!(e.contains(&format!("tensor `optimizer/{key}` holds -inf at index 0")), "{e}");

    // A non-finite running loss of the cut epoch.
    let mut bad = ck.clone();
    bad.progress.as_mut().unwrap().loss_sum = f64::INFINITY;
    bad.save(&path).unwrap();
    let e = Checkpoint::load(&path).unwrap_err().to_string();
    assert!(e.contains("epoch_loss_sum") && e.contains("finite"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_checkpoint_without_a_checksum_is_refused() {
    let dir = tmpdir("v1");
    let (path, _) = saved(&dir);
    let good = std::fs::read(&path).unwrap();
    let (views, mut meta) = parts(&good);
    meta.insert("format".into(), "descent-checkpoint-1".into());
    meta.remove("checksum");
    meta.remove("run_id");
    meta.remove("config_hash");
    std::fs::write(&path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
    let e = Checkpoint::load(&path).unwrap_err().to_string();
    assert!(e.starts_with(&path.display().to_string()), "{e}");
    assert!(e.contains("older descent") && e.contains("without a checksum") && e.contains("cannot be verified"), "{e}");

    // The current format with its checksum taken out.
    let (views, mut meta) = parts(&good);
    meta.remove("checksum");
    std::fs::write(&path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
    let e = Checkpoint::load(&path).unwrap_err().to_string();
    assert!(e.contains("`checksum` missing"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Early stopping resumed between its best epoch and its stop: the checkpoint holds the best
/// epoch so far, so the resumed run stops where the uninterrupted one does and restores the same
/// weights, bit for bit (it had started counting again from the first epoch it ran).
#[test]
fn early_stopping_resumes_with_its_best_epoch() {
    let data = mnist_slice();
    let mut c = TrainConfig::new("sgd", Some(1.5), 12, 100, Loss::CrossEntropy);
    c.patience = Some(2);
    let new_model = || Mlp::new(Init::TorchDefault, 0.0, &mut Rng::new(2), &Device::Cpu).unwrap();

    let full = new_model();
    let mut rec_full = Recorder::new(None);
    let (h_full, stop) = train_from(&full, &data, &data, &c, None, &mut rec_full).unwrap();
    let Stop::EarlyStopping { best_epoch } = stop else {
        panic!("{stop:?}: {:?}", h_full.iter().map(|m| m.test_loss).collect::<Vec<_>>())
    };
    assert_eq!(h_full.len(), best_epoch + 2);
    assert!(h_full[best_epoch].test_loss >= h_full[best_epoch - 1].test_loss);

    let first = new_model();
    let mut cut = c.clone();
    cut.epochs = best_epoch + 1;
    let mut rec = Recorder::new(None);
    let (_, stop) = train_from(&first, &data, &data, &cut, None, &mut rec).unwrap();
    assert_eq!(stop, Stop::Epochs);
    let ck = rec.last.clone().unwrap();
    let best = ck.best.as_ref().expect("the checkpoint records the best epoch");
    assert_eq!((best.epoch, best.test_loss.to_bits()), (best_epoch, h_full[best_epoch - 1].test_loss.to_bits()));

    let resumed = new_model();
    let (h2, stop) = train_from(&resumed, &data, &data, &c, Some(&ck), &mut Recorder::new(None)).unwrap();
    assert_eq!(stop, Stop::EarlyStopping { best_epoch });
    assert_eq!(h2.len(), 1);
    assert_eq!(h2[0].test_loss.to_bits(), h_full[best_epoch + 1].test_loss.to_bits());
    assert_eq!(weights(&full), weights(&resumed));

    // The run's end: the best epoch's weights, epoch and step, not resumable.
    let last = rec_full.last.clone().unwrap();
    let end = last.clone().restore_best("early stopping".into()).unwrap();
    assert_eq!((end.epoch, end.steps), (best_epoch, h_full[best_epoch - 1].steps));
    let model = new_model();
    end.apply_weights(&model).unwrap();
    assert_eq!(weights(&model), weights(&full));
    let dir = tmpdir("early-stop");
    let path = dir.join("checkpoint.safetensors");
    end.save(&path).unwrap();
    assert_eq!(Checkpoint::load(&path).unwrap(), end);
    let e = train_from(&new_model(), &data, &data, &c, Some(&end), &mut Recorder::new(None)).unwrap_err().to_string();
    assert!(e.contains("early stopping") && e.contains("restored best epoch"), "{e}");
    // A checkpoint with a best epoch reads back whole.
    last.save(&path).unwrap();
    assert_eq!(Checkpoint::load(&path).unwrap(), last);
}
