//! Datasets as candle tensors, batches in a seeded order.

use candle_core::{Device, Tensor};

use crate::error::Result;
use crate::mnist::Split;
use crate::rng::Rng;

/// MNIST's training-set mean and standard deviation of pixels in `[0, 1]` (torchvision's values).
pub const MNIST_MEAN: f32 = 0.1307;
pub const MNIST_STD: f32 = 0.3081;

/// Inputs and targets, first axis the sample.
#[derive(Clone)]
pub struct Dataset {
    pub x: Tensor,
    pub y: Tensor,
}

impl Dataset {
    /// MNIST images as `[n, 1, rows, cols]` in `[0, 1]` (or standardized with `normalize`), labels
    /// as `u32`.
    pub fn mnist(split: &Split, normalize: bool) -> Result<Dataset> {
        let (mean, std) = if normalize { (MNIST_MEAN, MNIST_STD) } else { (0.0, 1.0) };
        let x: Vec<f32> = split.images.iter().map(|&v| (v as f32 / 255.0 - mean) / std).collect();
        let y: Vec<u32> = split.labels.iter().map(|&l| l as u32).collect();
        let n = y.len();
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

    pub fn len(&self) -> usize {
        self.x.dims()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The samples at these indices.
    pub fn batch(&self, idx: &[u32]) -> Result<(Tensor, Tensor)> {
        let i = Tensor::from_slice(idx, idx.len(), &Device::Cpu)?;
        Ok((self.x.index_select(&i, 0)?, self.y.index_select(&i, 0)?))
    }

    /// Samples `start..start+len` (no copy of the index list).
    pub fn range(&self, start: usize, len: usize) -> Result<(Tensor, Tensor)> {
        Ok((self.x.narrow(0, start, len)?, self.y.narrow(0, start, len)?))
    }
}

/// The order of one epoch: `0..n` shuffled by `rng`.
pub fn epoch_order(n: usize, rng: &mut Rng) -> Vec<u32> {
    let mut v: Vec<u32> = (0..n as u32).collect();
    rng.shuffle(&mut v);
    v
}
