//! Datasets as candle tensors, batches in a seeded order.

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::mnist::Split;
use crate::rng::Rng;

/// MNIST's training-set mean and standard deviation of pixels in `[0, 1]` (torchvision's values).
pub const MNIST_MEAN: f32 = 0.1307;
/// MNIST's training-set standard deviation of pixels in `[0, 1]` (see [`MNIST_MEAN`]).
pub const MNIST_STD: f32 = 0.3081;

/// Inputs and targets, first axis the sample.
#[derive(Clone)]
pub struct Dataset {
    /// The inputs, `[samples, …]`.
    pub x: Tensor,
    /// The targets, `[samples]` (class indices) or `[samples, …]` (regression).
    pub y: Tensor,
}

impl Dataset {
    /// MNIST images as `[n, 1, rows, cols]` in `[0, 1]` (or standardized with `normalize`), labels
    /// as `u32`.
    /// A split whose images do not hold `rows × cols` bytes per label, or with a label past 9, is
    /// an error naming its file (a `Split` read by [`crate::mnist::load`] is always consistent).
    pub fn mnist(split: &Split, normalize: bool) -> Result<Dataset> {
        let n = split.labels.len();
        let want = n.checked_mul(split.rows).and_then(|v| v.checked_mul(split.cols));
        if want != Some(split.images.len()) {
            return Err(crate::Error::Data {
                path: split.images_file.display().to_string(),
                message: format!(
                    "{} bytes of images for {n} labels of {}×{} images",
                    split.images.len(),
                    split.rows,
                    split.cols
                ),
            });
        }
        if let Some((i, &l)) = split.labels.iter().enumerate().find(|(_, &l)| l > 9) {
            return Err(crate::Error::Data {
                path: split.labels_file.display().to_string(),
                message: format!("label {l} at index {i} is out of range 0..=9"),
            });
        }
        let (mean, std) = if normalize { (MNIST_MEAN, MNIST_STD) } else { (0.0, 1.0) };
        // The largest allocation of a run's start (188 MB for MNIST's training set): refused with
        // the memory it needs where it cannot be had, instead of aborting.
        let mut x: Vec<f32> = Vec::new();
        x.try_reserve_exact(split.images.len()).map_err(|_| crate::Error::Data {
            path: split.images_file.display().to_string(),
            message: format!(
                "not enough memory for its {n} images as floats ({} MB)",
                (4.0 * split.images.len() as f64 / 1e6).ceil()
            ),
        })?;
        x.extend(split.images.iter().map(|&v| (v as f32 / 255.0 - mean) / std));
        let y: Vec<u32> = split.labels.iter().map(|&l| l as u32).collect();
        Ok(Dataset {
            x: Tensor::from_vec(x, (n, 1, split.rows, split.cols), &Device::Cpu)?,
            y: Tensor::from_vec(y, n, &Device::Cpu)?,
        })
    }

    /// The synthetic regression set `y = 2x + 0.3·ε`, `x ~ U(−1, 1)`, `ε ~ N(0, 1)`: `[n, 1]` each.
    pub fn regression(n: usize, rng: &mut Rng) -> Result<Dataset> {
        let x: Vec<f32> = (0..n).map(|_| rng.range(-1.0, 1.0)).collect();
        let y: Vec<f32> = x.iter().map(|&v| 2.0 * v + 0.3 * rng.normal()).collect();
        Ok(Dataset { x: Tensor::from_vec(x, (n, 1), &Device::Cpu)?, y: Tensor::from_vec(y, (n, 1), &Device::Cpu)? })
    }

    /// Number of samples (0 for inputs without a sample axis, which [`Dataset::check`] refuses).
    pub fn len(&self) -> usize {
        self.x.dims().first().copied().unwrap_or(0)
    }

    /// Inputs and targets with a sample axis each, and as many targets as inputs.
    pub fn check(&self) -> Result<()> {
        let (x, y) = (self.x.dims(), self.y.dims());
        if x.is_empty() || y.is_empty() {
            return Err(Error::Param(format!("dataset: inputs {x:?} and targets {y:?} need a first axis, the sample")));
        }
        if x[0] != y[0] {
            return Err(Error::Param(format!("dataset: {} inputs but {} targets", x[0], y[0])));
        }
        Ok(())
    }

    /// Whether there is no sample.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The samples at these indices.
    pub fn batch(&self, idx: &[u32]) -> Result<(Tensor, Tensor)> {
        Ok((gather_rows(&self.x, idx)?, gather_rows(&self.y, idx)?))
    }

    /// Samples `start..start+len` (no copy of the index list).
    pub fn range(&self, start: usize, len: usize) -> Result<(Tensor, Tensor)> {
        Ok((self.x.narrow(0, start, len)?, self.y.narrow(0, start, len)?))
    }
}

/// Rows `idx` of `t` (first axis) as a new tensor: one copy per row for contiguous CPU data
/// (candle's `index_select` goes element by element, a tenth of a small model's step), candle's
/// `index_select` otherwise. An index past the end is an error.
fn gather_rows(t: &Tensor, idx: &[u32]) -> Result<Tensor> {
    let Some(&n) = t.dims().first() else {
        return Err(crate::Error::Param("a dataset's tensors need a first (sample) axis; got a scalar".into()));
    };
    if let Some(&bad) = idx.iter().find(|&&i| i as usize >= n) {
        return Err(crate::Error::Param(format!("sample index {bad} out of range for {n} samples")));
    }
    let mut dims = t.dims().to_vec();
    dims[0] = idx.len();
    let row = t.elem_count() / n.max(1);
    {
        let (storage, layout) = t.storage_and_layout();
        if let (candle_core::Storage::Cpu(s), Some((a, b))) = (&*storage, layout.contiguous_offsets()) {
            macro_rules! gather {
                ($v:expr) => {{
                    let src = &$v[a..b];
                    let mut out = Vec::with_capacity(idx.len() * row);
                    for &i in idx {
                        out.extend_from_slice(&src[i as usize * row..][..row]);
                    }
                    return Ok(Tensor::from_vec(out, dims, t.device())?);
                }};
            }
            match s {
                candle_core::CpuStorage::F32(v) => gather!(v),
                candle_core::CpuStorage::U32(v) => gather!(v),
                _ => {}
            }
        }
    }
    let i = Tensor::from_slice(idx, idx.len(), t.device())?;
    Ok(t.index_select(&i, 0)?)
}

/// The order of one epoch: `0..n` shuffled by `rng`.
pub fn epoch_order(n: usize, rng: &mut Rng) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n as u32).collect();
    rng.shuffle(&mut v);
    v
}
