//! What the PyTorch reference tests of layers and models share: tensors from the files' JSON, and
//! the one tolerance rule every comparison applies.

#![allow(dead_code)]

use candle_core::{Device, Tensor};
use serde_json::Value;

/// A `{"shape", "data"}` tensor of a reference file, as f32.
pub fn tensor(v: &Value) -> Tensor {
    let shape: Vec<usize> = v["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
    let data: Vec<f32> = v["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

/// A tensor's values, flattened.
pub fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// One reference file's comparisons: each tensor's error, those over tolerance, and the worst.
pub struct Check<'a> {
    pub file: &'a str,
    pub case: &'a Value,
    pub failures: Vec<String>,
    /// The largest error as a fraction of its bound, and where.
    pub worst: (f64, String),
}

impl<'a> Check<'a> {
    pub fn new(file: &'a str, case: &'a Value) -> Check<'a> {
        Check { file, case, failures: vec![], worst: (0.0, String::new()) }
    }

    /// Compares `ours` with the case's `field` (or `field.key`) under the file's tolerance for
    /// `field`: `rel` (1e-4) × the largest recorded magnitude + `abs` (1e-6), over the elements
    /// whose recorded gradient `grads.key` is at least `min_abs_grad` when the file gives one.
    pub fn close(&mut self, field: &str, key: Option<&str>, ours: &Tensor) {
        let what = key.map_or(field.to_string(), |k| format!("{field}.{k}"));
        let refv = key.map_or(&self.case[field], |k| &self.case[field][k]);
        assert!(refv.is_object(), "{}: no recorded {what}", self.file);
        let reference = tensor(refv);
        if ours.dims() != reference.dims() {
            self.failures.push(format!("{what}: shape {:?}, recorded {:?}", ours.dims(), reference.dims()));
            return;
        }
        let tol = &self.case["tolerance"][field];
        let rel = tol["rel"].as_f64().unwrap_or(1e-4);
        let abs = tol["abs"].as_f64().unwrap_or(1e-6);
        let (o, r) = (values(ours), values(&reference));
        let keep: Vec<bool> = match (tol["min_abs_grad"].as_f64(), key) {
            (Some(m), Some(k)) => values(&tensor(&self.case["grads"][k])).iter().map(|g| g.abs() as f64 >= m).collect(),
            _ => vec![true; r.len()],
        };
        let (mut err, mut scale) = (0.0f64, 0.0f64);
        for ((&a, &b), &k) in o.iter().zip(&r).zip(&keep) {
            if k {
                scale = scale.max((b as f64).abs());
                err = err.max(if a.is_nan() != b.is_nan() { f64::INFINITY } else { ((a - b) as f64).abs() });
            }
        }
        let bound = rel * scale + abs;
        eprintln!("{} {what}: max error {err:.3e}, bound {bound:.3e} ({:.3} of it)", self.file, err / bound);
        if err / bound > self.worst.0 {
            self.worst = (err / bound, what.clone());
        }
        if err.is_nan() || err > bound {
            self.failures.push(format!("{what}: max error {err} over {bound} (scale {scale})"));
        }
    }

    /// A scalar to 1e-5 relative.
    pub fn close_scalar(&mut self, field: &str, ours: f32) {
        let r = self.case[field].as_f64().unwrap_or_else(|| panic!("{}: no recorded {field}", self.file));
        let err = (ours as f64 - r).abs();
        eprintln!("{} {field}: {ours} against {r}, relative error {:.3e} (bound 1e-5)", self.file, err / r.abs());
        if err.is_nan() || err > 1e-5 * r.abs() {
            self.failures.push(format!("{field}: {ours}, recorded {r}"));
        }
    }
}

/// `shared/reference-nn-r2` beside the repository, or the folder of the same form that
/// `DESCENT_REFERENCE_NN_R2` names (another recording: other shapes, seeds, configurations).
pub fn reference_nn_r2() -> std::path::PathBuf {
    match std::env::var_os("DESCENT_REFERENCE_NN_R2") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference-nn-r2"),
    }
}
