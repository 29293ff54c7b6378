//! Cross-entropy as one candle op (`torch.nn.functional.cross_entropy`, mean reduction): log-softmax,
//! the pick of each target and the mean in one pass, and the backward `(softmax − onehot) / n`
//! directly. Composed from candle ops it takes about a dozen tensors each way, which is most of a
//! small model's step at batch 32.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Storage, Tensor};

use crate::cpu::{f32_slice, storage_f32s};

/// Mean cross-entropy of logits `[n, classes]` against class indices `[n]` (u32 or i64).
#[derive(Debug, Clone, Copy)]
pub struct CrossEntropyOp;

/// Class indices as `usize`, each checked against the number of classes.
fn targets(s: &CpuStorage, l: &Layout, classes: usize) -> candle_core::Result<Vec<usize>> {
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("cross_entropy: targets must be contiguous") };
    let t: Vec<i64> = match s {
        CpuStorage::U32(v) => v[a..b].iter().map(|&t| t as i64).collect(),
        CpuStorage::I64(v) => v[a..b].to_vec(),
        CpuStorage::U8(v) => v[a..b].iter().map(|&t| t as i64).collect(),
        _ => candle_core::bail!("cross_entropy: targets must be class indices (u8, u32 or i64)"),
    };
    t.into_iter()
        .enumerate()
        .map(|(i, t)| {
            if t < 0 || t as usize >= classes {
                candle_core::bail!("cross_entropy: target {t} of sample {i} is not a class in 0..{classes}")
            }
            Ok(t as usize)
        })
        .collect()
}

/// A row's log-softmax as torch computes it, `(x − m) − ln Σ exp(x − m)` around the row's maximum
/// `m`: the shift and `ln Σ`, applied as [`log_softmax_at`] does. (`x − (m + ln Σ)` would round
/// `m + ln Σ` at the size of `m`, about 1e-3 for logits near 1e4.)
fn log_softmax_parts(row: &[f32]) -> (f32, f32) {
    let m = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    if m == f32::NEG_INFINITY {
        return (0.0, f32::NEG_INFINITY);
    }
    (m, row.iter().map(|&v| (v - m).exp()).sum::<f32>().ln())
}

/// The log-softmax of logit `v` of a row of [`log_softmax_parts`] `(m, ln Σ)`.
#[inline]
fn log_softmax_at(v: f32, (m, ls): (f32, f32)) -> f32 {
    (v - m) - ls
}

impl CustomOp2 for CrossEntropyOp {
    fn name(&self) -> &'static str {
        "descent-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l1.dims();
        if dims.len() != 2 || l2.dims() != [dims[0]] || dims[0] == 0 {
            candle_core::bail!(
                "cross_entropy: logits [n, classes] {dims:?} and targets [n] {:?} do not fit",
                l2.dims()
            );
        }
        let (n, classes) = (dims[0], dims[1]);
        let x = f32_slice(s1, l1, "cross_entropy logits")?;
        let t = targets(s2, l2, classes)?;
        // The mean accumulated in f64: a running f32 sum over a large batch drifts (1e-5 relative
        // at 60 000 samples) from torch's reduction.
        let total: f64 =
            x.chunks(classes).zip(&t).map(|(row, &t)| -log_softmax_at(row[t], log_softmax_parts(row)) as f64).sum();
        Ok((CpuStorage::F32(vec![(total / n as f64) as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets_t: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, classes) = logits.dims2()?;
        let g = grad.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()? / n as f32;
        let (sx, lx) = logits.storage_and_layout();
        let (st, lt) = targets_t.storage_and_layout();
        let x = storage_f32s(&sx, lx, "cross_entropy logits")?;
        let Storage::Cpu(st) = &*st else { candle_core::bail!("cross_entropy targets: must be on the CPU") };
        let t = targets(st, lt, classes)?;
        let mut gx = vec![0.0f32; n * classes];
        for ((row, grow), &t) in x.chunks(classes).zip(gx.chunks_mut(classes)).zip(&t) {
            let parts = log_softmax_parts(row);
            for (gv, &v) in grow.iter_mut().zip(row) {
                *gv = g * log_softmax_at(v, parts).exp();
            }
            grow[t] -= g;
        }
        Ok((Some(Tensor::from_vec(gx, (n, classes), logits.device())?), None))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use crate::model::cross_entropy;

    /// The fused op against the composed definition `−mean(log_softmax(x)[t])`, values and
    /// gradients, with a large logit that overflows a naive softmax.
    #[test]
    fn fused_cross_entropy_matches_the_composed_one() {
        let x = Var::from_vec(vec![1.0f32, -2.0, 0.5, 80.0, 3.0, 2.0, -1.0, 0.0, 0.25], (3, 3), &Device::Cpu).unwrap();
        let t = Tensor::from_vec(vec![2u32, 0, 1], 3, &Device::Cpu).unwrap();
        let fused = cross_entropy(x.as_tensor(), &t).unwrap();
        let logp = candle_nn::ops::log_softmax(x.as_tensor(), 1).unwrap();
        let composed = logp.gather(&t.unsqueeze(1).unwrap(), 1).unwrap().mean_all().unwrap().neg().unwrap();
        let (a, b) = (fused.to_scalar::<f32>().unwrap(), composed.to_scalar::<f32>().unwrap());
        assert!((a - b).abs() < 1e-5 * b.abs(), "{a} vs {b}");
        let (ga, gb) = (fused.backward().unwrap(), composed.backward().unwrap());
        let (ga, gb) = (ga.get(x.as_tensor()).unwrap(), gb.get(x.as_tensor()).unwrap());
        let d = (ga - gb).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-6, "gradient differs by {d}");
    }

    /// Logits far from zero (3e4): the loss and its gradient against their float64 values (the
    /// softmax rounded at the size of the maximum before, 1e-3 here).
    #[test]
    fn cross_entropy_keeps_its_digits_far_from_zero() {
        let row = [3e4f32, 3e4 + 1.0, 3e4 - 0.5, 3e4 + 2.0];
        let x = Var::from_vec(row.to_vec(), (1, 4), &Device::Cpu).unwrap();
        let t = Tensor::from_vec(vec![1u32], 1, &Device::Cpu).unwrap();
        let loss = cross_entropy(x.as_tensor(), &t).unwrap();
        let grad =
            loss.backward().unwrap().get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let m = 3e4f64 + 2.0;
        let ls = row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        let exact_loss = ls - (row[1] as f64 - m);
        assert!((loss.to_scalar::<f32>().unwrap() as f64 - exact_loss).abs() < 1e-6, "loss");
        for (j, &g) in grad.iter().enumerate() {
            let p = (row[j] as f64 - m - ls).exp() - if j == 1 { 1.0 } else { 0.0 };
            assert!((g as f64 - p).abs() < 1e-6, "gradient {j}: {g} against {p}");
        }
    }

    #[test]
    fn a_target_outside_the_classes_is_an_error_naming_it() {
        let x = Tensor::zeros((2, 10), candle_core::DType::F32, &Device::Cpu).unwrap();
        let t = Tensor::from_vec(vec![3u32, 10], 2, &Device::Cpu).unwrap();
        let e = cross_entropy(&x, &t).unwrap_err().to_string();
        assert!(e.contains("target 10 of sample 1") && e.contains("0..10"), "{e}");
        let short = Tensor::from_vec(vec![3u32], 1, &Device::Cpu).unwrap();
        assert!(cross_entropy(&x, &short).unwrap_err().to_string().contains("do not fit"));
    }
}
