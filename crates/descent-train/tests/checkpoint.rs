//! Checkpoints: a file that was changed, holds a NaN or predates checksums is refused with the
//! reason.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use descent_train::checkpoint::Checkpoint;
use descent_train::data::Dataset;
use descent_train::model::{Init, LinearRegression};
use descent_train::rng::Rng;
use descent_train::train::{train_from, EpochEnd, EpochMetrics, Hooks, Loss, StepMetrics, TrainConfig};

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("descent-ck-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Records every step and epoch, and saves a checkpoint at each epoch end (the last one stays).
struct Recorder {
    path: Option<PathBuf>,
    steps: Vec<StepMetrics>,
    epochs: Vec<EpochMetrics>,
    last: Option<Checkpoint>,
}

impl Recorder {
    fn new(path: Option<&Path>) -> Self {
        Recorder { path: path.map(Path::to_path_buf), steps: vec![], epochs: vec![], last: None }
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
        if let Some(p) = &self.path {
            ck.save(p)?;
        }
        self.last = Some(ck);
        Ok(())
    }
}

/// A small saved checkpoint (linear regression, Adam).
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
    assert!(fresh.run_id.is_empty() && fresh.config_hash.is_empty());
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
