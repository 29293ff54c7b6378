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
    #[serde(with = "exact_floats")]
    pub buffers: BTreeMap<String, Vec<f32>>,
    /// Real-valued scalars by name (estimated step sizes, running sums).
    #[serde(with = "exact_floats")]
    pub scalars: BTreeMap<String, f64>,
    /// Step counters by name.
    pub counters: BTreeMap<String, u64>,
}

pub(crate) use exact_floats::one as exact_float;

/// Floats in JSON as descent writes them elsewhere: numbers, and the strings `"NaN"`, `"inf"`,
/// `"-inf"` for what JSON numbers cannot hold (a diverged run's state round-trips too).
mod exact_floats {
    use std::collections::BTreeMap;
    use std::fmt;

    use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
    use serde::ser::{SerializeMap, SerializeSeq, Serializer};
    use serde::Serialize;

    /// A float type of the state: `f32` buffers, `f64` scalars (each widens to `f64` exactly).
    pub trait Float: Copy {
        fn to_f64(self) -> f64;
        fn from_f64(x: f64) -> Self;
        /// Serializes a finite value as its own type (an `f32` in its shortest form).
        fn put<S: Serializer>(self, s: S) -> Result<S::Ok, S::Error>;
    }
    macro_rules! float {
        ($t:ty, $put:ident) => {
            impl Float for $t {
                fn to_f64(self) -> f64 {
                    self as f64
                }
                fn from_f64(x: f64) -> Self {
                    x as $t
                }
                fn put<S: Serializer>(self, s: S) -> Result<S::Ok, S::Error> {
                    s.$put(self)
                }
            }
        };
    }
    float!(f32, serialize_f32);
    float!(f64, serialize_f64);

    /// One float, written exactly.
    struct Exact<T>(T);
    impl<T: Float> Serialize for Exact<T> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            match crate::json::non_finite_name(self.0.to_f64()) {
                None => self.0.put(s),
                Some(name) => s.serialize_str(name),
            }
        }
    }
    /// A list of floats, written exactly.
    struct List<'a, T>(&'a [T]);
    impl<T: Float> Serialize for List<'_, T> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(self.0.len()))?;
            for &x in self.0 {
                seq.serialize_element(&Exact(x))?;
            }
            seq.end()
        }
    }

    /// A value of a map: one float or a list of them.
    pub trait Entry: Sized {
        fn write<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error>;
        fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error>;
    }
    impl Entry for f64 {
        fn write<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            Exact(*self).serialize(s)
        }
        fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(One::<f64>(std::marker::PhantomData))
        }
    }
    impl Entry for Vec<f32> {
        fn write<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            List(self).serialize(s)
        }
        fn read<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Many;
            impl<'de> Visitor<'de> for Many {
                type Value = Vec<f32>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a list of numbers (or \"NaN\", \"inf\", \"-inf\")")
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Vec<f32>, A::Error> {
                    let mut v = Vec::with_capacity(a.size_hint().unwrap_or(0));
                    while let Some(x) = a.next_element_seed(OneSeed::<f32>(std::marker::PhantomData))? {
                        v.push(x);
                    }
                    Ok(v)
                }
            }
            d.deserialize_seq(Many)
        }
    }

    /// One float: a number or one of the three strings.
    struct One<T>(std::marker::PhantomData<T>);
    impl<T: Float> Visitor<'_> for One<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a number, \"NaN\", \"inf\" or \"-inf\"")
        }
        fn visit_f64<E: de::Error>(self, x: f64) -> Result<T, E> {
            Ok(T::from_f64(x))
        }
        fn visit_i64<E: de::Error>(self, x: i64) -> Result<T, E> {
            Ok(T::from_f64(x as f64))
        }
        fn visit_u64<E: de::Error>(self, x: u64) -> Result<T, E> {
            Ok(T::from_f64(x as f64))
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
            crate::json::non_finite_value(s)
                .map(T::from_f64)
                .ok_or_else(|| E::invalid_value(de::Unexpected::Str(s), &self))
        }
    }
    struct OneSeed<T>(std::marker::PhantomData<T>);
    impl<'de, T: Float> de::DeserializeSeed<'de> for OneSeed<T> {
        type Value = T;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
            d.deserialize_any(One::<T>(std::marker::PhantomData))
        }
    }

    /// One `f64` field written exactly (`#[serde(with = "crate::state::exact_float")]`): a
    /// number, or `"NaN"`, `"inf"`, `"-inf"` (serde_json writes a non-finite float as `null` and
    /// refuses to read it back).
    pub mod one {
        use serde::{Deserializer, Serialize, Serializer};

        pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
            super::Exact(*x).serialize(s)
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
            d.deserialize_any(super::One::<f64>(std::marker::PhantomData))
        }
    }

    pub fn serialize<V: Entry, S: Serializer>(map: &BTreeMap<String, V>, s: S) -> Result<S::Ok, S::Error> {
        struct Value<'a, V>(&'a V);
        impl<V: Entry> Serialize for Value<'_, V> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.0.write(s)
            }
        }
        let mut m = s.serialize_map(Some(map.len()))?;
        for (k, v) in map {
            m.serialize_entry(k, &Value(v))?;
        }
        m.end()
    }

    pub fn deserialize<'de, V: Entry, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, V>, D::Error> {
        struct Map<V>(std::marker::PhantomData<V>);
        impl<'de, V: Entry> Visitor<'de> for Map<V> {
            type Value = BTreeMap<String, V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of named state entries")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                struct Seed<V>(std::marker::PhantomData<V>);
                impl<'de, V: Entry> de::DeserializeSeed<'de> for Seed<V> {
                    type Value = V;
                    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<V, D::Error> {
                        V::read(d)
                    }
                }
                let mut out = BTreeMap::new();
                while let Some(k) = a.next_key::<String>()? {
                    let v = a
                        .next_value_seed(Seed::<V>(std::marker::PhantomData))
                        .map_err(|e| de::Error::custom(format!("`{k}`: {e}")))?;
                    out.insert(k, v);
                }
                Ok(out)
            }
        }
        d.deserialize_map(Map::<V>(std::marker::PhantomData))
    }
}

impl StateDict {
    /// Serializes to JSON text (floats round-trip exactly; NaN and infinities as the strings
    /// `"NaN"`, `"inf"`, `"-inf"`).
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

/// Loads `dict` into the state that `visit` walks, whole or not at all: checked first (every
/// entry present, every buffer of its length, nothing left over), then loaded; should the state
/// refuse a value while it is loaded (a bfloat16 buffer holding other values, an L-BFGS history
/// index out of range), the state as it was is put back before the error is returned. The state
/// is copied once for that, so a load holds it twice for a moment.
pub fn load_whole(visit: &mut dyn FnMut(&mut dyn StateVisitor) -> Result<()>, dict: &StateDict) -> Result<()> {
    let mut check = Checker::new(dict);
    visit(&mut check)?;
    check.finish()?;
    let mut before = Saver::default();
    visit(&mut before)?;
    if let Err(e) = visit(&mut Loader::new(dict)) {
        visit(&mut Loader::new(&before.dict))?;
        return Err(e);
    }
    Ok(())
}

/// The learning rates an optimizer holds, saved with its state as torch saves each param group's
/// `lr`: a rate set between steps (`param_group["lr"] = …`, [`crate::Optimizer::set_learning_rate`])
/// resumes as it was. Scalars `optimizer.lr.K`, in the order of the optimizer's
/// `visit_learning_rates`; a schedule's rate is not saved (it follows the step count).
pub(crate) mod learning_rates {
    use super::StateDict;
    use crate::error::{Error, Result};
    use crate::LearningRate;

    const PREFIX: &str = "optimizer.lr.";

    fn key(k: usize) -> String {
        format!("{PREFIX}{k}")
    }

    /// Adds the constant rates among `rates` to `dict`.
    pub(crate) fn save(rates: &[Option<f64>], dict: &mut StateDict) {
        for (k, r) in rates.iter().enumerate() {
            if let Some(r) = r {
                dict.scalars.insert(key(k), *r);
            }
        }
    }

    /// Takes the saved rates out of `dict`, checked against an optimizer holding `count` rates
    /// (a state saved before rates were saved has none: the rates stay as built).
    pub(crate) fn take(dict: &mut StateDict, count: usize) -> Result<Vec<(usize, f64)>> {
        let keys: Vec<String> = dict.scalars.keys().filter(|k| k.starts_with(PREFIX)).cloned().collect();
        let mut out = Vec::with_capacity(keys.len());
        for name in keys {
            let x = dict.scalars.remove(&name).unwrap_or(f64::NAN);
            let k = name[PREFIX.len()..].parse::<usize>().ok().filter(|&k| k < count && key(k) == name);
            let Some(k) = k else {
                return Err(Error::State(format!(
                    "learning rate `{name}`: the optimizer holds {count} learning rate(s) (optimizer.lr.0 …)"
                )));
            };
            if !x.is_finite() || x < 0.0 {
                return Err(Error::State(format!("learning rate `{name}` = {x}: a finite, non-negative rate")));
            }
            out.push((k, x));
        }
        Ok(out)
    }

    /// Sets the rates [`take`] returned, walking the optimizer's rates with `visit`.
    pub(crate) fn restore(visit: impl FnOnce(&mut dyn FnMut(&mut LearningRate)), saved: &[(usize, f64)]) {
        if saved.is_empty() {
            return;
        }
        let mut k = 0;
        visit(&mut |r| {
            if let Some(&(_, x)) = saved.iter().find(|(i, _)| *i == k) {
                *r = LearningRate::Constant(x);
            }
            k += 1;
        });
    }
}

/// Adds `0 ×` each entry's value in `before` to the entry of the state it visits: nothing where that
/// value was finite, NaN where it was not (optax's arithmetic reset, `(1 − s)·state + s·init`).
/// Counters stay as they are.
pub struct AddZeroTimes {
    before: StateDict,
    scopes: Vec<String>,
}

impl AddZeroTimes {
    /// Adds `0 ×` the entries of `before`.
    pub fn new(before: StateDict) -> Self {
        AddZeroTimes { before, scopes: vec![] }
    }
}

impl StateVisitor for AddZeroTimes {
    fn buffer(&mut self, name: &str, buf: &mut Vec<f32>) -> Result<()> {
        if let Some(old) = self.before.buffers.get(&join(&self.scopes, name)) {
            buf.iter_mut().zip(old).for_each(|(x, o)| *x += 0.0 * o);
        }
        Ok(())
    }
    fn scalar(&mut self, name: &str, x: &mut f64) -> Result<()> {
        if let Some(o) = self.before.scalars.get(&join(&self.scopes, name)) {
            *x += 0.0 * o;
        }
        Ok(())
    }
    fn counter(&mut self, _: &str, _: &mut u64) -> Result<()> {
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
