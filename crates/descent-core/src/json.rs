//! JSON as descent reads it from files and flags: serde_json's reading, except that a key given
//! twice in one object is refused (serde_json keeps the last and silently drops the other).

use serde_json::Value;

/// The name descent writes in JSON for a float that JSON numbers cannot hold: `"NaN"`, `"inf"`,
/// `"-inf"`; `None` for a finite one.
pub fn non_finite_name(x: f64) -> Option<&'static str> {
    match x {
        x if x.is_finite() => None,
        x if x.is_nan() => Some("NaN"),
        x if x > 0.0 => Some("inf"),
        _ => Some("-inf"),
    }
}

/// The float a name of [`non_finite_name`] stands for; `None` for any other string.
pub fn non_finite_value(name: &str) -> Option<f64> {
    match name {
        "NaN" => Some(f64::NAN),
        "inf" => Some(f64::INFINITY),
        "-inf" => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

/// Parses `s` (one JSON value, nothing after it), refusing an object that names a key twice
/// (``key `lr` given twice``, with serde_json's line and column).
pub fn parse_strict(s: &str) -> serde_json::Result<Value> {
    use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};

    struct Strict(Value);
    struct StrictVisitor;
    impl<'de> Deserialize<'de> for Strict {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
            d.deserialize_any(StrictVisitor).map(Strict)
        }
    }
    impl<'de> Visitor<'de> for StrictVisitor {
        type Value = Value;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Bool(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_str<E>(self, v: &str) -> Result<Value, E> {
            Ok(Value::String(v.to_string()))
        }
        fn visit_unit<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            let mut v = vec![];
            while let Some(Strict(x)) = seq.next_element()? {
                v.push(x);
            }
            Ok(Value::Array(v))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let mut m = serde_json::Map::new();
            while let Some((k, Strict(v))) = map.next_entry::<String, Strict>()? {
                if m.contains_key(&k) {
                    return Err(A::Error::custom(format!("key `{k}` given twice")));
                }
                m.insert(k, v);
            }
            Ok(Value::Object(m))
        }
    }
    let mut de = serde_json::Deserializer::from_str(s);
    Strict::deserialize(&mut de).and_then(|v| de.end().map(|_| v.0))
}

#[cfg(test)]
mod tests {
    use super::parse_strict;

    #[test]
    fn a_key_given_twice_is_refused_anywhere_and_the_rest_reads_as_serde_json_does() {
        let e = parse_strict(r#"{"a": {"lr": 1, "lr": 2}}"#).unwrap_err();
        assert!(e.to_string().contains("key `lr` given twice"), "{e}");
        let text = r#"{"x": [1, -2, 3.5e-3, true, null, "s"], "y": {"z": 18446744073709551615}}"#;
        assert_eq!(parse_strict(text).unwrap(), serde_json::from_str::<serde_json::Value>(text).unwrap());
        assert!(parse_strict("{} 1").is_err());
    }
}
