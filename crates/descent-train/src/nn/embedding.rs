//! Embedding lookup: candle's `index_select`, whose backward (`index_add`) adds up the gradients of
//! rows picked more than once, as `torch.nn.functional.embedding` does; its `padding_idx` and
//! `scale_grad_by_freq` ([`embedding_with`]).

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

/// The arguments of `torch.nn.functional.embedding` that change its gradient (its `max_norm`,
/// which rewrites the table in the forward pass, is not taken).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmbeddingOptions {
    /// A row whose gradient is always zero (torch's `padding_idx`; negative counts from the end,
    /// `-1` the last row). Its lookups still give the row as it is.
    pub padding_idx: Option<i64>,
    /// Divide each row's gradient by the number of times the batch picked it (torch's
    /// `scale_grad_by_freq`).
    pub scale_grad_by_freq: bool,
}

impl EmbeddingOptions {
    /// The padding row of a `v`-row table, checked as torch checks it.
    fn padding_row(&self, v: usize) -> Result<Option<usize>> {
        let Some(p) = self.padding_idx else { return Ok(None) };
        let row = if p < 0 { p + v as i64 } else { p };
        if row < 0 || row >= v as i64 {
            return Err(Error::Param(format!("embedding: padding_idx {p} must be within the {v}-row table")));
        }
        Ok(Some(row as usize))
    }
}

/// `torch.nn.functional.embedding(indices, weight, padding_idx, scale_grad_by_freq=…)`: the
/// lookup of [`embedding`], whose gradient skips the padding row and, with `scale_grad_by_freq`,
/// divides each row's sum by the count of its lookups in `indices` (as torch scales each lookup's
/// gradient before adding it).
pub fn embedding_with(indices: &Tensor, weight: &Tensor, options: EmbeddingOptions) -> Result<Tensor> {
    let (v, _) = weight.dims2()?;
    let table = match options.padding_row(v)? {
        None => weight.clone(),
        Some(r) => {
            // The padding row through a detached copy: the same values, no gradient.
            let keep: Vec<f32> = (0..v).map(|i| if i == r { 0.0 } else { 1.0 }).collect();
            let keep = Tensor::from_vec(keep, (v, 1), weight.device())?.to_dtype(weight.dtype())?;
            let frozen = weight.broadcast_mul(&keep.affine(-1.0, 1.0)?)?.detach();
            (weight.broadcast_mul(&keep)? + frozen)?
        }
    };
    let y = embedding(indices, &table)?;
    if !options.scale_grad_by_freq {
        return Ok(y);
    }
    let picked: Vec<i64> = indices.flatten_all()?.to_dtype(candle_core::DType::I64)?.to_vec1()?;
    let mut counts = vec![0u64; v];
    for &i in &picked {
        counts[i as usize] += 1;
    }
    let scale: Vec<f32> = picked.iter().map(|&i| (1.0 / counts[i as usize] as f64) as f32).collect();
    let mut shape = indices.dims().to_vec();
    shape.push(1);
    let scale = Tensor::from_vec(scale, shape, y.device())?.to_dtype(y.dtype())?;
    // The values of `y`, and its gradient times each lookup's scale.
    let detached = y.detach();
    Ok((&detached + (&y - &detached)?.broadcast_mul(&scale)?)?)
}

/// `torch.nn.Embedding(v, c)`: a `[v, c]` table initialized `N(0, 1)` (PyTorch's default).
#[derive(Clone)]
pub struct Embedding {
    /// `[vocabulary, channels]`.
    pub weight: Var,
    /// `padding_idx` and `scale_grad_by_freq` ([`Embedding::padding_idx`] sets the first as
    /// torch's constructor does).
    pub options: EmbeddingOptions,
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
        Ok(Embedding {
            weight: Var::from_tensor(&Tensor::from_vec(w, (v, c), dev)?)?,
            options: EmbeddingOptions::default(),
        })
    }
    /// `torch.nn.Embedding(…, padding_idx=p)`: the padding row set to zeros, and never trained.
    pub fn padding_idx(mut self, p: i64) -> Result<Self> {
        self.options.padding_idx = Some(p);
        let (v, c) = self.weight.dims2()?;
        let row = self.options.padding_row(v)?.expect("set above");
        let mut w = self.weight.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        w[row * c..(row + 1) * c].fill(0.0);
        self.weight.set(&Tensor::from_vec(w, (v, c), self.weight.device())?)?;
        Ok(self)
    }
    /// The rows of the table at `indices` (`[…]` → `[…, channels]`).
    pub fn forward(&self, indices: &Tensor) -> Result<Tensor> {
        if self.options == EmbeddingOptions::default() {
            embedding(indices, self.weight.as_tensor())
        } else {
            embedding_with(indices, self.weight.as_tensor(), self.options)
        }
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
