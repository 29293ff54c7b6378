//! Optimizer state as a flat dictionary of named buffers and scalars, for saving and resuming.
//!
//! Every transformation exposes its state through [`StateVisitor`]; one visitor reads it into a
//! [`StateDict`], another writes a [`StateDict`] back. Scalars are stored as `f64` and counters as
//! `u64`, so a saved and restored state continues bit for bit.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Visits every piece of state of a transformation under a dotted name.
pub trait StateVisitor {
    /// A buffer of `f32` values (moments, accumulators, …).
    fn buffer(&mut self, name: &str, buf: &mut Vec<f32>) -> Result<()>;
    /// A buffer stored in one byte an element, handed over as `f32` values (exact for bytes).
    fn quantized_buffer(&mut self, name: &str, buf: &mut Vec<f32>) -> Result<()> {
        self.buffer(name, buf)
    }
    /// A bfloat16 buffer, as its exact `f32` values (2 bytes an element as stored).
    fn bf16_buffer(&mut self, name: &str, buf: &mut Vec<f32>) -> Result<()> {
        self.buffer(name, buf)
    }
    /// A real-valued scalar (estimated learning rates, running sums, …).
    fn scalar(&mut self, name: &str, x: &mut f64) -> Result<()>;
    /// A step counter.
    fn counter(&mut self, name: &str, x: &mut u64) -> Result<()>;
    /// Enters a named scope (a chain link, a group); names below it are prefixed.
    fn push(&mut self, scope: &str);
    /// Leaves the last scope.
    fn pop(&mut self);
}

/// Visits a list of per-parameter buffers as `name.0`, `name.1`, ….
pub fn visit_buffers(v: &mut dyn StateVisitor, name: &str, bufs: &mut [Vec<f32>]) -> Result<()> {
    for (i, b) in bufs.iter_mut().enumerate() {
        v.buffer(&format!("{name}.{i}"), b)?;
    }
    Ok(())
}

/// Buffers that can be visited under a name (plain per-parameter vectors or
/// [`crate::kernel::ParamBufs`]).
pub trait VisitBuffers {
    /// Hands every buffer to `v` under `name` (one entry per parameter).
    fn visit_as(&mut self, v: &mut dyn StateVisitor, name: &str) -> Result<()>;
}

impl VisitBuffers for Vec<Vec<f32>> {
    fn visit_as(&mut self, v: &mut dyn StateVisitor, name: &str) -> Result<()> {
        visit_buffers(v, name, self)
    }
}

impl VisitBuffers for crate::kernel::ParamBufs<f32> {
    fn visit_as(&mut self, v: &mut dyn StateVisitor, name: &str) -> Result<()> {
        self.visit(v, name)
    }
}

/// bfloat16 state travels as its exact `f32` values and comes back as bfloat16 bits.
impl VisitBuffers for crate::kernel::ParamBufs<u16> {
    fn visit_as(&mut self, v: &mut dyn StateVisitor, name: &str) -> Result<()> {
        use crate::transforms::{bf16_to_f32, f32_to_bf16};
        self.with_buffers(|d| {
            for (i, b) in d.iter_mut().enumerate() {
                let mut f: Vec<f32> = b.iter().map(|&x| bf16_to_f32(x)).collect();
                v.bf16_buffer(&format!("{name}.{i}"), &mut f)?;
                if f.iter().any(|x| x.to_bits() & 0xffff != 0) {
                    return Err(Error::State(format!("buffer `{name}.{i}` holds values that are not bfloat16")));
                }
                *b = f.iter().map(|&x| f32_to_bf16(x)).collect();
            }
            Ok(())
        })
    }
}

/// Quantized state travels as `f32` values (exact for bytes) and comes back as bytes.
impl VisitBuffers for crate::kernel::ParamBufs<u8> {
    fn visit_as(&mut self, v: &mut dyn StateVisitor, name: &str) -> Result<()> {
        self.with_buffers(|d| {
            for (i, b) in d.iter_mut().enumerate() {
                let mut f: Vec<f32> = b.iter().map(|&x| x as f32).collect();
                v.quantized_buffer(&format!("{name}.{i}"), &mut f)?;
                if f.iter().any(|&x| !(0.0..=255.0).contains(&x) || x.fract() != 0.0) {
                    return Err(Error::State(format!("buffer `{name}.{i}` holds values that are not bytes")));
                }
                *b = f.iter().map(|&x| x as u8).collect();
            }
            Ok(())
        })
    }
}

/// The saved state of an optimizer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateDict {
    /// Buffers by name (moments, accumulators), one per parameter and kind.
    pub buffers: BTreeMap<String, Vec<f32>>,
    /// Real-valued scalars by name (estimated step sizes, running sums).
    pub scalars: BTreeMap<String, f64>,
    /// Step counters by name.
    pub counters: BTreeMap<String, u64>,
}

impl StateDict {
    /// Serializes to JSON text (floats round-trip exactly).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|e| Error::State(e.to_string()))
    }
    /// Parses JSON text written by [`StateDict::to_json`].
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::State(format!("malformed state: {e}")))
    }
}

fn join(scopes: &[String], name: &str) -> String {
    let mut s = scopes.join(".");
    if !s.is_empty() {
        s.push('.');
    }
    s.push_str(name);
    s
}

/// Reads state into a [`StateDict`].
#[derive(Default)]
pub struct Saver {
    scopes: Vec<String>,
    /// The state read so far.
    pub dict: StateDict,
}

impl StateVisitor for Saver {
    fn buffer(&mut self, name: &str, buf: &mut Vec<f32>) -> Result<()> {
        self.dict.buffers.insert(join(&self.scopes, name), buf.clone());
        Ok(())
    }
    fn scalar(&mut self, name: &str, x: &mut f64) -> Result<()> {
        self.dict.scalars.insert(join(&self.scopes, name), *x);
        Ok(())
    }
    fn counter(&mut self, name: &str, x: &mut u64) -> Result<()> {
        self.dict.counters.insert(join(&self.scopes, name), *x);
        Ok(())
    }
    fn push(&mut self, scope: &str) {
        self.scopes.push(scope.to_string());
    }
    fn pop(&mut self) {
        self.scopes.pop();
    }
}

/// Checks a [`StateDict`] against an optimizer without changing it: every entry present, every
/// buffer of the right length, nothing left over. Run before [`Loader`] so that a mismatched
/// state is refused whole, never half-loaded.
pub struct Checker<'a> {
    scopes: Vec<String>,
    dict: &'a StateDict,
    seen: usize,
}

impl<'a> Checker<'a> {
    /// A `Checker` with these hyper-parameters (`dict`), as described above.
    pub fn new(dict: &'a StateDict) -> Self {
        Checker { scopes: vec![], dict, seen: 0 }
    }
    /// Fails if the dictionary holds entries the optimizer does not have.
    pub fn finish(self) -> Result<()> {
        let total = self.dict.buffers.len() + self.dict.scalars.len() + self.dict.counters.len();
        if total != self.seen {
            return Err(Error::State(format!(
                "the saved state has {total} entries but this optimizer has {}",
                self.seen
            )));
        }
        Ok(())
    }
}

impl StateVisitor for Checker<'_> {
    fn buffer(&mut self, name: &str, buf: &mut Vec<f32>) -> Result<()> {
        let key = join(&self.scopes, name);
        match self.dict.buffers.get(&key) {
            None => Err(Error::State(format!("missing buffer `{key}`"))),
            Some(b) if b.len() != buf.len() => {
                Err(Error::State(format!("buffer `{key}` has {} elements, expected {}", b.len(), buf.len())))
            }
            Some(_) => {
                self.seen += 1;
                Ok(())
            }
        }
    }
    fn scalar(&mut self, name: &str, _x: &mut f64) -> Result<()> {
        let key = join(&self.scopes, name);
        if !self.dict.scalars.contains_key(&key) {
            return Err(Error::State(format!("missing scalar `{key}`")));
        }
        self.seen += 1;
        Ok(())
    }
    fn counter(&mut self, name: &str, _x: &mut u64) -> Result<()> {
        let key = join(&self.scopes, name);
        if !self.dict.counters.contains_key(&key) {
            return Err(Error::State(format!("missing counter `{key}`")));
        }
        self.seen += 1;
        Ok(())
    }
    fn push(&mut self, scope: &str) {
        self.scopes.push(scope.to_string());
    }
    fn pop(&mut self) {
        self.scopes.pop();
    }
}

/// Writes a checked [`StateDict`] into an optimizer.
pub struct Loader<'a> {
    scopes: Vec<String>,
    dict: &'a StateDict,
}

impl<'a> Loader<'a> {
    /// A `Loader` with these hyper-parameters (`dict`), as described above.
    pub fn new(dict: &'a StateDict) -> Self {
        Loader { scopes: vec![], dict }
    }
}

impl StateVisitor for Loader<'_> {
    fn buffer(&mut self, name: &str, buf: &mut Vec<f32>) -> Result<()> {
        let key = join(&self.scopes, name);
        let b = self.dict.buffers.get(&key).ok_or_else(|| Error::State(format!("missing buffer `{key}`")))?;
        buf.clear();
        buf.extend_from_slice(b);
        Ok(())
    }
    fn scalar(&mut self, name: &str, x: &mut f64) -> Result<()> {
        let key = join(&self.scopes, name);
        *x = *self.dict.scalars.get(&key).ok_or_else(|| Error::State(format!("missing scalar `{key}`")))?;
        Ok(())
    }
    fn counter(&mut self, name: &str, x: &mut u64) -> Result<()> {
        let key = join(&self.scopes, name);
        *x = *self.dict.counters.get(&key).ok_or_else(|| Error::State(format!("missing counter `{key}`")))?;
        Ok(())
    }
    fn push(&mut self, scope: &str) {
        self.scopes.push(scope.to_string());
    }
    fn pop(&mut self) {
        self.scopes.pop();
    }
}
