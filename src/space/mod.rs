//! Search spaces: floats, integers (both linear or log) and categoricals, with simple conditions.
//!
//! Declared in TOML as an array of `[[space]]` tables, which a run config can embed:
//!
//! ```toml
//! [[space]]
//! name = "lr"
//! type = "float"        # float | int | categorical
//! low = 0.001
//! high = 0.2
//! log = false           # optional, default false; log needs low > 0
//! default = 0.1         # optional: middle of the range / first choice
//!
//! [[space]]
//! name = "optimizer"
//! type = "categorical"
//! choices = ["sgd", "adam", "rmsprop"]
//! default = "sgd"
//!
//! [[space]]
//! name = "momentum"
//! type = "float"
//! low = 0.0
//! high = 0.9
//! default = 0.9
//! active_if = { optimizer = ["sgd", "rmsprop"] }   # parents must be declared earlier
//! ```
//!
//! Internally a configuration is a *vector*: floats and ints map to the unit interval (linear or log
//! scale; an int owns the equal-width cell around its value), a categorical is its choice index and an
//! inactive parameter is NaN. The optimizer works on vectors only and converts the chosen one to a
//! [`Config`] at the end, which keeps the acquisition maximiser free of string handling.

mod config;
mod spec;

use std::collections::HashSet;

use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

pub use config::{Config, Value};
pub use spec::{OneOrMany, ParamSpec, ParamType, SpaceError, SpaceErrorKind};

/// Standard deviation (in unit-cube coordinates) of numeric one-exchange neighbours, as in SMAC.
const NEIGHBOUR_STDEV: f64 = 0.2;

/// Value domain of one hyperparameter, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum Domain {
    Float {
        low: f64,
        high: f64,
        log: bool,
        default: f64,
    },
    Int {
        low: i64,
        high: i64,
        log: bool,
        default: i64,
    },
    Categorical {
        choices: Vec<String>,
        /// Index into `choices`.
        default: usize,
    },
}

/// Values of a parent that make a child active.
#[derive(Debug, Clone, PartialEq)]
pub enum AllowedValues {
    Choices(Vec<usize>),
    Ints(Vec<i64>),
}

/// "Parent `parent` (an index into the space, always smaller than the child's) takes one of `allowed`".
#[derive(Debug, Clone, PartialEq)]
pub struct Clause {
    pub parent: usize,
    pub allowed: AllowedValues,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub name: String,
    pub domain: Domain,
    /// All must hold for the parameter to be active; empty = always active.
    pub conditions: Vec<Clause>,
}

/// How the surrogate should treat one feature column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureKind {
    /// Ordered values; inactive is imputed as -1 (below the unit interval).
    Continuous,
    /// Category indices `0..n`; the last index stands for "inactive".
    Categorical { n: usize },
}

/// A problem with a configuration given from outside (a replayed log, a user's file).
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ConfigError {
    #[error("parameter \"{0}\" is not in the search space")]
    Unknown(String),
    #[error("parameter \"{0}\" is active but has no value")]
    Missing(String),
    #[error("parameter \"{0}\" is inactive under its conditions but has a value")]
    Inactive(String),
    #[error("parameter \"{name}\" = {value}: expected {expected}")]
    WrongType {
        name: String,
        value: String,
        expected: &'static str,
    },
    #[error("parameter \"{name}\" = {value} is outside [{low}, {high}]")]
    OutOfBounds {
        name: String,
        value: f64,
        low: f64,
        high: f64,
    },
    #[error("parameter \"{name}\" = \"{value}\" is not among the choices {choices:?}")]
    NotAChoice {
        name: String,
        value: String,
        choices: Vec<String>,
    },
}

/// A validated search space.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchSpace {
    params: Vec<Param>,
    /// The declaration, kept to serialise the space back (e.g. into a run's metadata).
    specs: Vec<ParamSpec>,
}

impl SearchSpace {
    /// Validates a list of declared parameters; `source` (a file name) prefixes error locations.
    pub fn new(specs: Vec<ParamSpec>, source: Option<&str>) -> Result<Self, SpaceError> {
        spec::build(specs, source)
    }

    /// Parses a TOML document and reads its `[[space]]` array.
    pub fn from_toml_str(text: &str, source: Option<&str>) -> Result<Self, SpaceError> {
        let doc: toml::Table = toml::from_str(text).map_err(|e| SpaceError {
            location: spec::document_location(source),
            kind: SpaceErrorKind::Toml(e.message().trim().to_string()),
        })?;
        match doc.get("space") {
            Some(toml::Value::Array(entries)) => Self::from_toml_values(entries, source),
            _ => Err(SpaceError {
                location: spec::document_location(source),
                kind: SpaceErrorKind::MissingSpaceKey,
            }),
        }
    }

    /// Builds a space from already-parsed `[[space]]` tables (e.g. taken out of a run config).
    pub fn from_toml_values(
        entries: &[toml::Value],
        source: Option<&str>,
    ) -> Result<Self, SpaceError> {
        let specs = spec::parse_entries(entries, source)?;
        Self::new(specs, source)
    }

    pub fn params(&self) -> &[Param] {
        &self.params
    }

    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.params.iter().position(|p| p.name == name)
    }

    /// Whether parameter `j` is active given the (already settled) values of earlier parameters in `v`.
    pub fn is_active(&self, j: usize, v: &[f64]) -> bool {
        self.params[j].conditions.iter().all(|clause| {
            let pv = v[clause.parent];
            if pv.is_nan() {
                return false;
            }
            match (&clause.allowed, &self.params[clause.parent].domain) {
                (AllowedValues::Choices(idx), _) => idx.contains(&(pv as usize)),
                (AllowedValues::Ints(ints), d) => ints.contains(&decode_int(d, pv)),
            }
        })
    }

    /// Makes `v` consistent: inactive entries become NaN, newly active ones get their default, and ints
    /// snap to the centre of their cell so that equal configurations have equal vectors.
    pub fn repair(&self, v: &mut [f64]) {
        for j in 0..self.params.len() {
            if !self.is_active(j, v) {
                v[j] = f64::NAN;
            } else if v[j].is_nan() {
                v[j] = self.default_unit(j);
            } else {
                v[j] = canonical(&self.params[j].domain, v[j]);
            }
        }
    }

    /// The default value of parameter `j` in vector form.
    fn default_unit(&self, j: usize) -> f64 {
        match &self.params[j].domain {
            Domain::Float {
                low,
                high,
                log,
                default,
            } => encode_float(*low, *high, *log, *default),
            d @ Domain::Int { default, .. } => encode_int(d, *default),
            Domain::Categorical { default, .. } => *default as f64,
        }
    }

    pub fn default_vector(&self) -> Vec<f64> {
        let mut v: Vec<f64> = (0..self.params.len())
            .map(|j| self.default_unit(j))
            .collect();
        self.repair(&mut v);
        v
    }

    /// The configuration made of every parameter's default.
    pub fn default_config(&self) -> Config {
        self.to_config(&self.default_vector())
    }

    /// Maps a point of the unit cube `[0, 1)^d` to a vector (categoricals take cell `floor(p * k)`).
    pub fn from_unit(&self, p: &[f64]) -> Vec<f64> {
        let mut v: Vec<f64> = self
            .params
            .iter()
            .zip(p)
            .map(|(param, &x)| match &param.domain {
                Domain::Categorical { choices, .. } => {
                    ((x * choices.len() as f64).floor()).clamp(0.0, (choices.len() - 1) as f64)
                }
                _ => x.clamp(0.0, 1.0),
            })
            .collect();
        self.repair(&mut v);
        v
    }

    /// A uniformly random vector (log parameters are log-uniform).
    pub fn sample_vector<R: Rng + ?Sized>(&self, rng: &mut R) -> Vec<f64> {
        let p: Vec<f64> = (0..self.params.len())
            .map(|_| rng.random::<f64>())
            .collect();
        self.from_unit(&p)
    }

    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Config {
        self.to_config(&self.sample_vector(rng))
    }

    /// Decodes a vector; inactive (NaN) entries are left out.
    pub fn to_config(&self, v: &[f64]) -> Config {
        let mut config = Config::new();
        for (param, &x) in self.params.iter().zip(v) {
            if x.is_nan() {
                continue;
            }
            let value = match &param.domain {
                Domain::Float { low, high, log, .. } => {
                    Value::Float(decode_float(*low, *high, *log, x))
                }
                d @ Domain::Int { .. } => Value::Int(decode_int(d, x)),
                Domain::Categorical { choices, .. } => {
                    Value::Str(choices[(x as usize).min(choices.len() - 1)].clone())
                }
            };
            config.insert(param.name.clone(), value);
        }
        config
    }

    /// Encodes a configuration given from outside, checking names, types, bounds and conditions.
    pub fn to_vector(&self, config: &Config) -> Result<Vec<f64>, ConfigError> {
        if let Some((name, _)) = config.iter().find(|(n, _)| self.index_of(n).is_none()) {
            return Err(ConfigError::Unknown(name.to_string()));
        }
        let mut v = vec![f64::NAN; self.params.len()];
        for (j, param) in self.params.iter().enumerate() {
            let value = config.get(&param.name);
            if !self.is_active(j, &v) {
                if value.is_some() {
                    return Err(ConfigError::Inactive(param.name.clone()));
                }
                continue;
            }
            let value = value.ok_or_else(|| ConfigError::Missing(param.name.clone()))?;
            let wrong = |expected| ConfigError::WrongType {
                name: param.name.clone(),
                value: format!("{value:?}"),
                expected,
            };
            v[j] = match &param.domain {
                Domain::Float { low, high, log, .. } => {
                    let x = value.as_f64().ok_or_else(|| wrong("a number"))?;
                    if !(*low..=*high).contains(&x) {
                        return Err(out_of_bounds(&param.name, x, *low, *high));
                    }
                    encode_float(*low, *high, *log, x)
                }
                d @ Domain::Int { low, high, .. } => {
                    let i = value.as_i64().ok_or_else(|| wrong("an integer"))?;
                    if !(*low..=*high).contains(&i) {
                        return Err(out_of_bounds(
                            &param.name,
                            i as f64,
                            *low as f64,
                            *high as f64,
                        ));
                    }
                    encode_int(d, i)
                }
                Domain::Categorical { choices, .. } => {
                    let s = value.as_str().ok_or_else(|| wrong("a string"))?;
                    choices
                        .iter()
                        .position(|c| c == s)
                        .ok_or_else(|| ConfigError::NotAChoice {
                            name: param.name.clone(),
                            value: s.to_string(),
                            choices: choices.clone(),
                        })? as f64
                }
            };
        }
        Ok(v)
    }

    /// Checks that `config` is a valid member of the space.
    pub fn validate(&self, config: &Config) -> Result<(), ConfigError> {
        self.to_vector(config).map(|_| ())
    }

    /// A hashable identity of a vector, for "never propose the same configuration twice".
    pub fn key(v: &[f64]) -> Vec<u64> {
        v.iter()
            .map(|x| if x.is_nan() { u64::MAX } else { x.to_bits() })
            .collect()
    }

    /// One-exchange neighbourhood (SMAC): for each active parameter, vectors that differ in it only.
    ///
    /// Categoricals and small ints (up to 5 values) contribute every other value; floats and larger ints
    /// `per_numeric` draws from a normal (sd 0.2 in the unit interval) around the current value, truncated
    /// to the interval. Conditional children follow their parent (default when newly active). The list
    /// comes back shuffled so ties between equal neighbours are broken at random, not by declaration order.
    pub fn neighbours<R: Rng + ?Sized>(
        &self,
        v: &[f64],
        per_numeric: usize,
        rng: &mut R,
    ) -> Vec<Vec<f64>> {
        let mut out = Vec::new();
        let with_changed = |j: usize, x: f64, out: &mut Vec<Vec<f64>>| {
            let mut n = v.to_vec();
            n[j] = x;
            self.repair(&mut n);
            out.push(n);
        };
        for (j, param) in self.params.iter().enumerate() {
            let cur = v[j];
            if cur.is_nan() {
                continue;
            }
            match &param.domain {
                Domain::Categorical { choices, .. } => {
                    for c in 0..choices.len() {
                        if c as f64 != cur {
                            with_changed(j, c as f64, &mut out);
                        }
                    }
                }
                d @ Domain::Int { low, high, .. } if high - low < 5 => {
                    let current = decode_int(d, cur);
                    for i in *low..=*high {
                        if i != current {
                            with_changed(j, encode_int(d, i), &mut out);
                        }
                    }
                }
                d @ Domain::Int { .. } => {
                    let current = decode_int(d, cur);
                    let mut seen: Vec<i64> = Vec::new();
                    for _ in 0..per_numeric * 3 {
                        if seen.len() == per_numeric {
                            break;
                        }
                        let i = decode_int(d, truncated_normal(cur, rng));
                        if i != current && !seen.contains(&i) {
                            seen.push(i);
                            with_changed(j, encode_int(d, i), &mut out);
                        }
                    }
                }
                Domain::Float { low, high, .. } => {
                    if low == high {
                        continue;
                    }
                    for _ in 0..per_numeric {
                        with_changed(j, truncated_normal(cur, rng), &mut out);
                    }
                }
            }
        }
        out.shuffle(rng);
        out
    }

    /// Column types for the surrogate; see [`SearchSpace::features`].
    pub fn feature_kinds(&self) -> Vec<FeatureKind> {
        self.params
            .iter()
            .map(|p| match &p.domain {
                Domain::Categorical { choices, .. } => FeatureKind::Categorical {
                    n: choices.len() + 1,
                },
                _ => FeatureKind::Continuous,
            })
            .collect()
    }

    /// A vector with inactive entries imputed for the surrogate: -1 for numeric parameters (outside the
    /// unit interval, so a split can isolate them), the extra category `k` for categoricals.
    pub fn features(&self, v: &[f64]) -> Vec<f64> {
        let mut out = Vec::with_capacity(v.len());
        self.features_into(v, &mut out);
        out
    }

    pub fn features_into(&self, v: &[f64], out: &mut Vec<f64>) {
        out.clear();
        out.extend(
            self.params
                .iter()
                .zip(v)
                .map(|(p, &x)| match (&p.domain, x.is_nan()) {
                    (Domain::Categorical { choices, .. }, true) => choices.len() as f64,
                    (_, true) => -1.0,
                    (_, false) => x,
                }),
        );
    }

    /// Every distinct configuration, when the space is finite (no floats with a range) and holds at most
    /// `limit` of them; used to tell an exhausted small space from a crowded one.
    pub fn enumerate(&self, limit: usize) -> Option<Vec<Vec<f64>>> {
        let mut per_param: Vec<Vec<f64>> = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let values: Vec<f64> = match &p.domain {
                Domain::Float { low, high, log, .. } if low == high => {
                    vec![encode_float(*low, *high, *log, *low)]
                }
                Domain::Float { .. } => return None,
                d @ Domain::Int { low, high, .. } => {
                    if (high - low) as u128 >= limit as u128 {
                        return None;
                    }
                    (*low..=*high).map(|i| encode_int(d, i)).collect()
                }
                Domain::Categorical { choices, .. } => {
                    (0..choices.len()).map(|c| c as f64).collect()
                }
            };
            per_param.push(values);
        }
        let mut out: Vec<Vec<f64>> = vec![Vec::new()];
        for (j, values) in per_param.iter().enumerate() {
            let mut next = Vec::new();
            for partial in &out {
                let mut probe = partial.clone();
                probe.resize(self.params.len(), f64::NAN);
                if self.is_active(j, &probe) {
                    for &x in values {
                        let mut p = partial.clone();
                        p.push(x);
                        next.push(p);
                    }
                } else {
                    let mut p = partial.clone();
                    p.push(f64::NAN);
                    next.push(p);
                }
                if next.len() > limit {
                    return None;
                }
            }
            out = next;
        }
        let mut seen = HashSet::new();
        out.retain(|v| seen.insert(Self::key(v)));
        Some(out)
    }
}

fn out_of_bounds(name: &str, value: f64, low: f64, high: f64) -> ConfigError {
    ConfigError::OutOfBounds {
        name: name.to_string(),
        value,
        low,
        high,
    }
}

fn encode_float(low: f64, high: f64, log: bool, x: f64) -> f64 {
    if high == low {
        return 0.5;
    }
    if log {
        (x.ln() - low.ln()) / (high.ln() - low.ln())
    } else {
        (x - low) / (high - low)
    }
}

/// Decoded floats are rounded to 12 significant digits: the unit-interval round trip then gives back
/// exactly the value a user wrote (0.01, not 0.010000000000000002), far below any meaningful resolution.
fn decode_float(low: f64, high: f64, log: bool, u: f64) -> f64 {
    let x = if log {
        (low.ln() + u * (high.ln() - low.ln())).exp()
    } else {
        low + u * (high - low)
    };
    let rounded = format!("{x:.11e}").parse::<f64>().unwrap_or(x);
    rounded.clamp(low, high)
}

/// Ints own the cell [i - 0.5, i + 0.5] of the (log-)scaled range, so uniform sampling of the unit
/// interval gives each value its fair share.
fn int_range(d: &Domain) -> (f64, f64, bool, i64, i64) {
    match d {
        Domain::Int { low, high, log, .. } => {
            let (a, b) = (*low as f64 - 0.5, *high as f64 + 0.5);
            if *log {
                (a.ln(), b.ln(), true, *low, *high)
            } else {
                (a, b, false, *low, *high)
            }
        }
        _ => (0.0, 1.0, false, 0, 0),
    }
}

fn encode_int(d: &Domain, i: i64) -> f64 {
    let (a, b, log, _, _) = int_range(d);
    let x = if log { (i as f64).ln() } else { i as f64 };
    ((x - a) / (b - a)).clamp(0.0, 1.0)
}

fn decode_int(d: &Domain, u: f64) -> i64 {
    let (a, b, log, low, high) = int_range(d);
    let x = a + u.clamp(0.0, 1.0) * (b - a);
    let x = if log { x.exp() } else { x };
    (x.round() as i64).clamp(low, high)
}

fn canonical(d: &Domain, u: f64) -> f64 {
    match d {
        Domain::Int { .. } => encode_int(d, decode_int(d, u)),
        Domain::Float { .. } => u.clamp(0.0, 1.0),
        Domain::Categorical { .. } => u,
    }
}

/// Normal(mean, 0.2) truncated to [0, 1] by rejection (a fallback clamp keeps it bounded in time).
fn truncated_normal<R: Rng + ?Sized>(mean: f64, rng: &mut R) -> f64 {
    for _ in 0..32 {
        let x = mean + NEIGHBOUR_STDEV * standard_normal(rng);
        if (0.0..=1.0).contains(&x) {
            return x;
        }
    }
    mean.clamp(0.0, 1.0)
}

/// Box-Muller; rand 0.9 without rand_distr has no normal distribution.
pub(crate) fn standard_normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

impl Serialize for SearchSpace {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.specs.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SearchSpace {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let entries = Vec::<toml::Value>::deserialize(deserializer)?;
        SearchSpace::from_toml_values(&entries, None).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
