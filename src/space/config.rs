//! Configurations: the values the optimizer hands to an evaluator.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One hyperparameter value.
///
/// Serialised untagged so a JSON config reads naturally: floats as numbers (`0.1`, `3.0`), integers as
/// integers (`5`), categorical choices as strings (`"sgd"`).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Float(f64),
    Int(i64),
    Str(String),
}

impl Value {
    /// The value as a float; integers widen, strings give `None`.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(x) => Some(*x),
            Value::Int(i) => Some(*i as f64),
            Value::Str(_) => None,
        }
    }

    /// The value as an integer; floats are accepted only when integral (a JSON `3.0` for an int parameter).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Float(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => Some(*x as i64),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Float(x) => write!(f, "{x}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Str(s) => write!(f, "{s}"),
        }
    }
}

impl From<f64> for Value {
    fn from(x: f64) -> Self {
        Value::Float(x)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_string())
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Float(x) => serializer.serialize_f64(*x),
            Value::Int(i) => serializer.serialize_i64(*i),
            Value::Str(s) => serializer.serialize_str(s),
        }
    }
}

struct ValueVisitor;

impl Visitor<'_> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number or a string")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        i64::try_from(v)
            .map(Value::Int)
            .map_err(|_| E::custom(format!("integer {v} does not fit in 64-bit signed range")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

/// An ordered map from parameter name to value.
///
/// Entries keep the search space's declaration order (a `Vec`, not a hash map) so that printing, JSON and
/// replay are stable. Inactive conditional parameters are absent, as in SMAC/ConfigSpace.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    entries: Vec<(String, Value)>,
}

impl Config {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` to `value`, replacing an existing entry in place (its position is kept).
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<Value>) {
        let name = name.into();
        let value = value.into();
        match self.entries.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.entries.push((name, value)),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// Float value of `name` (integers widen).
    pub fn f64(&self, name: &str) -> Option<f64> {
        self.get(name).and_then(Value::as_f64)
    }

    pub fn i64(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(Value::as_i64)
    }

    pub fn str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(Value::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, value)) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{name}={value}")?;
        }
        Ok(())
    }
}

impl<K: Into<String>, V: Into<Value>> FromIterator<(K, V)> for Config {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut config = Config::new();
        for (k, v) in iter {
            config.insert(k, v);
        }
        config
    }
}

impl Serialize for Config {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.entries.len()))?;
        for (name, value) in &self.entries {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

struct ConfigVisitor;

impl<'de> Visitor<'de> for ConfigVisitor {
    type Value = Config;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map from parameter name to value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Config, A::Error> {
        let mut config = Config::new();
        while let Some((name, value)) = access.next_entry::<String, Value>()? {
            if config.get(&name).is_some() {
                return Err(de::Error::custom(format!(
                    "parameter \"{name}\" appears twice"
                )));
            }
            config.entries.push((name, value));
        }
        Ok(config)
    }
}

impl<'de> Deserialize<'de> for Config {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ConfigVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_keeps_order_and_types() {
        let mut c = Config::new();
        c.insert("optimizer", "sgd");
        c.insert("lr", 0.1);
        c.insert("bits", 5i64);
        c.insert("momentum", 3.0);
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(
            text,
            r#"{"optimizer":"sgd","lr":0.1,"bits":5,"momentum":3.0}"#
        );
        let back: Config = serde_json::from_str(&text).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.i64("bits"), Some(5));
        assert_eq!(back.f64("bits"), Some(5.0));
        assert_eq!(back.str("optimizer"), Some("sgd"));
        assert_eq!(
            back.to_string(),
            "optimizer=sgd, lr=0.1, bits=5, momentum=3"
        );
    }

    #[test]
    fn insert_replaces_in_place() {
        let mut c: Config = [("a", 1i64), ("b", 2i64)].into_iter().collect();
        c.insert("a", 7i64);
        assert_eq!(c.iter().map(|(n, _)| n).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(c.i64("a"), Some(7));
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let err = serde_json::from_str::<Config>(r#"{"a": 1, "a": 2}"#).unwrap_err();
        assert!(err.to_string().contains("\"a\" appears twice"), "{err}");
    }
}
