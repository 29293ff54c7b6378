//! Embedding lookup: candle's `index_select`, whose backward (`index_add`) adds up the gradients of
//! rows picked more than once, as `torch.nn.functional.embedding` does.

use candle_core::{Device, Tensor, Var};

use crate::error::{Error, Result};
use crate::rng::Rng;

/// `torch.nn.functional.embedding(indices, weight)`: integer `indices` of any shape (u8, u32 or
/// i64) pick rows of `weight` `[v, c]`, giving `[..indices, c]`. Indices outside `0..v` are an error.
pub fn embedding(indices: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (v, c) = weight.dims2()?;
    let flat = indices.flatten_all()?;
    if flat.elem_count() > 0 {
        let wide = flat.to_dtype(candle_core::DType::I64)?;
        let (lo, hi) = (wide.min_all()?.to_scalar::<i64>()?, wide.max_all()?.to_scalar::<i64>()?);
        if lo < 0 || hi as usize >= v {
            let bad = if lo < 0 { lo } else { hi };
            return Err(Error::Param(format!("embedding: index {bad} is not a row of the {v}-row table")));
        }
    }
    let mut shape = indices.dims().to_vec();
    shape.push(c);
    Ok(weight.index_select(&flat, 0)?.reshape(shape)?)
}

/// `torch.nn.Embedding(v, c)`: a `[v, c]` table initialized `N(0, 1)` (PyTorch's default).
#[derive(Clone)]
pub struct Embedding {
    /// `[vocabulary, channels]`.
    pub weight: Var,
}

impl Embedding {
    /// A table of `v` vectors of `c` channels, `N(0, 1)` as `torch.nn.Embedding` initializes it
    /// (nanoGPT re-draws it `N(0, 0.02²)`: [`Embedding::normal`]).
    pub fn new(v: usize, c: usize, rng: &mut Rng, dev: &Device) -> Result<Self> {
        Self::normal(v, c, 1.0, rng, dev)
    }
    /// A table initialized `N(0, std²)` (GPT-2 uses 0.02).
    pub fn normal(v: usize, c: usize, std: f32, rng: &mut Rng, dev: &Device) -> Result<Self> {
        let w: Vec<f32> = (0..v * c).map(|_| std * rng.normal()).collect();
        Ok(Embedding { weight: Var::from_tensor(&Tensor::from_vec(w, (v, c), dev)?)? })
    }
    /// The rows of the table at `indices` (`[…]` → `[…, channels]`).
    pub fn forward(&self, indices: &Tensor) -> Result<Tensor> {
        embedding(indices, self.weight.as_tensor())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::embedding;

    #[test]
    fn an_index_outside_the_table_is_an_error_naming_it() {
        let w = Tensor::zeros((4, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        for (bad, name) in [(vec![0i64, 4], "index 4"), (vec![-1i64, 2], "index -1")] {
            let e = embedding(&Tensor::new(bad.as_slice(), &Device::Cpu).unwrap(), &w).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains("4-row"), "{e}");
        }
        let ok = embedding(&Tensor::new(&[[3u32, 0], [1, 1]], &Device::Cpu).unwrap(), &w).unwrap();
        assert_eq!(ok.dims(), [2, 2, 3]);
    }
}
