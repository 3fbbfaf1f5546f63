//! The declared (TOML/serde) form of a search space and its validation.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::config::Value;
use super::{AllowedValues, Clause, Domain, Param, SearchSpace};

/// Kind of a hyperparameter as written in `type = "..."`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    Float,
    #[serde(alias = "integer")]
    Int,
    Categorical,
}

impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParamType::Float => "float",
            ParamType::Int => "int",
            ParamType::Categorical => "categorical",
        })
    }
}

/// One or several allowed values in `active_if`, so `{ optimizer = "sgd" }` works as well as a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(Value),
    Many(Vec<Value>),
}

impl OneOrMany {
    fn values(&self) -> &[Value] {
        match self {
            OneOrMany::One(v) => std::slice::from_ref(v),
            OneOrMany::Many(vs) => vs,
        }
    }
}

/// One `[[space]]` entry exactly as declared; [`SearchSpace::new`] validates a list of them.
///
/// `default` may be left out: floats and ints then default to the middle of their range (the geometric
/// middle on a log scale, as ConfigSpace does), categoricals to their first choice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ParamType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high: Option<f64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub log: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// Parent name -> values for which this parameter is active; several parents must all match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_if: Option<BTreeMap<String, OneOrMany>>,
}

impl ParamSpec {
    /// A float parameter without condition (convenient for spaces built in code, e.g. test problems).
    pub fn float(name: &str, low: f64, high: f64, default: f64) -> Self {
        ParamSpec {
            name: name.to_string(),
            kind: ParamType::Float,
            low: Some(low),
            high: Some(high),
            log: false,
            choices: None,
            default: Some(Value::Float(default)),
            active_if: None,
        }
    }

    pub fn int(name: &str, low: i64, high: i64, default: i64) -> Self {
        ParamSpec {
            name: name.to_string(),
            kind: ParamType::Int,
            low: Some(low as f64),
            high: Some(high as f64),
            log: false,
            choices: None,
            default: Some(Value::Int(default)),
            active_if: None,
        }
    }

    pub fn categorical(name: &str, choices: &[&str], default: &str) -> Self {
        ParamSpec {
            name: name.to_string(),
            kind: ParamType::Categorical,
            low: None,
            high: None,
            log: false,
            choices: Some(choices.iter().map(|c| c.to_string()).collect()),
            default: Some(Value::Str(default.to_string())),
            active_if: None,
        }
    }

    /// Puts the parameter on a log scale.
    pub fn log(mut self) -> Self {
        self.log = true;
        self
    }

    /// Makes the parameter active only when `parent` takes one of `values`.
    pub fn active_if(mut self, parent: &str, values: &[Value]) -> Self {
        self.active_if
            .get_or_insert_with(BTreeMap::new)
            .insert(parent.to_string(), OneOrMany::Many(values.to_vec()));
        self
    }
}

/// A problem in a search space declaration, located by file and entry.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{location}: {kind}")]
pub struct SpaceError {
    /// e.g. `space.toml: [[space]] entry 3 ("momentum")`.
    pub location: String,
    pub kind: SpaceErrorKind,
}

/// What is wrong, with the offending values and what is expected.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum SpaceErrorKind {
    #[error("invalid TOML: {0}")]
    Toml(String),
    #[error("expected an array of [[space]] tables under the key \"space\"")]
    MissingSpaceKey,
    #[error("the search space has no parameters; declare at least one [[space]] entry")]
    Empty,
    #[error("invalid entry: {0}")]
    Entry(String),
    #[error("name must not be empty")]
    EmptyName,
    #[error("duplicate name \"{name}\", already declared by entry {first}")]
    DuplicateName { name: String, first: usize },
    #[error("\"{field}\" is required for a {kind} parameter")]
    MissingField {
        field: &'static str,
        kind: ParamType,
    },
    #[error("\"{field}\" does not apply to a {kind} parameter")]
    FieldNotAllowed {
        field: &'static str,
        kind: ParamType,
    },
    #[error("{field} must be a finite number, got {value}")]
    NotFinite { field: &'static str, value: f64 },
    #[error("{field} must be an integer for an int parameter, got {value}")]
    NotInteger { field: &'static str, value: f64 },
    #[error("low ({low}) is greater than high ({high}); expected low <= high")]
    LowAboveHigh { low: f64, high: f64 },
    #[error("log scale needs low > 0, got low = {low}")]
    LogNeedsPositive { low: f64 },
    #[error("default {default} is outside [{low}, {high}]")]
    DefaultOutOfBounds {
        default: String,
        low: f64,
        high: f64,
    },
    #[error("default {default} has the wrong type; expected {expected}")]
    DefaultWrongType {
        default: String,
        expected: &'static str,
    },
    #[error("choices must not be empty; list at least one string")]
    EmptyChoices,
    #[error("choice \"{0}\" is listed twice")]
    DuplicateChoice(String),
    #[error("default \"{default}\" is not among the choices {choices:?}")]
    DefaultNotAChoice {
        default: String,
        choices: Vec<String>,
    },
    #[error("active_if refers to unknown parameter \"{0}\"")]
    UnknownParent(String),
    #[error(
        "active_if refers to \"{0}\", which is declared after this entry; declare parents first"
    )]
    ParentDeclaredLater(String),
    #[error("active_if on \"{0}\" itself; a parameter cannot depend on itself")]
    SelfCondition(String),
    #[error(
        "active_if on float parameter \"{0}\" is not supported; conditions need a categorical or int parent"
    )]
    FloatParent(String),
    #[error("active_if lists no values for \"{0}\"")]
    EmptyCondition(String),
    #[error("active_if value {value} for \"{parent}\" is not a possible value of it ({expected})")]
    ConditionValue {
        parent: String,
        value: String,
        expected: String,
    },
}

fn entry_location(source: Option<&str>, index: usize, name: Option<&str>) -> String {
    let mut loc = String::new();
    if let Some(src) = source {
        loc.push_str(src);
        loc.push_str(": ");
    }
    loc.push_str(&format!("[[space]] entry {}", index + 1));
    if let Some(name) = name {
        loc.push_str(&format!(" (\"{name}\")"));
    }
    loc
}

/// Location for problems that concern the whole declaration, not one entry.
pub(super) fn document_location(source: Option<&str>) -> String {
    source.unwrap_or("search space").to_string()
}

pub(super) fn parse_entries(
    entries: &[toml::Value],
    source: Option<&str>,
) -> Result<Vec<ParamSpec>, SpaceError> {
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            ParamSpec::deserialize(entry.clone()).map_err(|e| {
                let name = entry.get("name").and_then(toml::Value::as_str);
                SpaceError {
                    location: entry_location(source, i, name),
                    kind: SpaceErrorKind::Entry(e.message().trim().to_string()),
                }
            })
        })
        .collect()
}

fn finite(field: &'static str, value: f64) -> Result<f64, SpaceErrorKind> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(SpaceErrorKind::NotFinite { field, value })
    }
}

fn integral(field: &'static str, value: f64) -> Result<i64, SpaceErrorKind> {
    if value.fract() == 0.0 && value.abs() < 9.0e15 {
        Ok(value as i64)
    } else {
        Err(SpaceErrorKind::NotInteger { field, value })
    }
}

fn bounds(spec: &ParamSpec) -> Result<(f64, f64), SpaceErrorKind> {
    let low = spec.low.ok_or(SpaceErrorKind::MissingField {
        field: "low",
        kind: spec.kind,
    })?;
    let high = spec.high.ok_or(SpaceErrorKind::MissingField {
        field: "high",
        kind: spec.kind,
    })?;
    let (low, high) = (finite("low", low)?, finite("high", high)?);
    if low > high {
        return Err(SpaceErrorKind::LowAboveHigh { low, high });
    }
    if spec.log && low <= 0.0 {
        return Err(SpaceErrorKind::LogNeedsPositive { low });
    }
    if spec.choices.is_some() {
        return Err(SpaceErrorKind::FieldNotAllowed {
            field: "choices",
            kind: spec.kind,
        });
    }
    Ok((low, high))
}

fn domain(spec: &ParamSpec) -> Result<Domain, SpaceErrorKind> {
    match spec.kind {
        ParamType::Float => {
            let (low, high) = bounds(spec)?;
            let default = match &spec.default {
                None if spec.log => (0.5 * (low.ln() + high.ln())).exp().clamp(low, high),
                None => 0.5 * (low + high),
                Some(v) => {
                    let x = v.as_f64().ok_or_else(|| SpaceErrorKind::DefaultWrongType {
                        default: format!("\"{v}\""),
                        expected: "a number",
                    })?;
                    if !(low..=high).contains(&finite("default", x)?) {
                        return Err(SpaceErrorKind::DefaultOutOfBounds {
                            default: x.to_string(),
                            low,
                            high,
                        });
                    }
                    x
                }
            };
            Ok(Domain::Float {
                low,
                high,
                log: spec.log,
                default,
            })
        }
        ParamType::Int => {
            let (low, high) = bounds(spec)?;
            let (low, high) = (integral("low", low)?, integral("high", high)?);
            let default = match &spec.default {
                None if spec.log => ((low as f64).ln() * 0.5 + (high as f64).ln() * 0.5)
                    .exp()
                    .round() as i64,
                None => low + (high - low) / 2,
                Some(Value::Int(i)) => *i,
                Some(Value::Float(x)) => integral("default", *x)?,
                Some(v) => {
                    return Err(SpaceErrorKind::DefaultWrongType {
                        default: format!("\"{v}\""),
                        expected: "an integer",
                    });
                }
            };
            if !(low..=high).contains(&default) {
                return Err(SpaceErrorKind::DefaultOutOfBounds {
                    default: default.to_string(),
                    low: low as f64,
                    high: high as f64,
                });
            }
            Ok(Domain::Int {
                low,
                high,
                log: spec.log,
                default,
            })
        }
        ParamType::Categorical => {
            for (field, present) in [
                ("low", spec.low.is_some()),
                ("high", spec.high.is_some()),
                ("log", spec.log),
            ] {
                if present {
                    return Err(SpaceErrorKind::FieldNotAllowed {
                        field,
                        kind: spec.kind,
                    });
                }
            }
            let choices = spec.choices.clone().ok_or(SpaceErrorKind::MissingField {
                field: "choices",
                kind: spec.kind,
            })?;
            if choices.is_empty() {
                return Err(SpaceErrorKind::EmptyChoices);
            }
            for (i, c) in choices.iter().enumerate() {
                if choices[..i].contains(c) {
                    return Err(SpaceErrorKind::DuplicateChoice(c.clone()));
                }
            }
            let default = match &spec.default {
                None => 0,
                Some(Value::Str(s)) => choices.iter().position(|c| c == s).ok_or_else(|| {
                    SpaceErrorKind::DefaultNotAChoice {
                        default: s.clone(),
                        choices: choices.clone(),
                    }
                })?,
                Some(v) => {
                    return Err(SpaceErrorKind::DefaultWrongType {
                        default: v.to_string(),
                        expected: "one of the choices, as a string",
                    });
                }
            };
            Ok(Domain::Categorical { choices, default })
        }
    }
}

fn clause(
    params: &[Param],
    all_names: &[&str],
    own_name: &str,
    parent: &str,
    values: &OneOrMany,
) -> Result<Clause, SpaceErrorKind> {
    if parent == own_name {
        return Err(SpaceErrorKind::SelfCondition(parent.to_string()));
    }
    let Some(index) = params.iter().position(|p| p.name == parent) else {
        return Err(if all_names.contains(&parent) {
            SpaceErrorKind::ParentDeclaredLater(parent.to_string())
        } else {
            SpaceErrorKind::UnknownParent(parent.to_string())
        });
    };
    let values = values.values();
    if values.is_empty() {
        return Err(SpaceErrorKind::EmptyCondition(parent.to_string()));
    }
    let allowed = match &params[index].domain {
        Domain::Float { .. } => return Err(SpaceErrorKind::FloatParent(parent.to_string())),
        Domain::Categorical { choices, .. } => {
            let mut idx = Vec::with_capacity(values.len());
            for v in values {
                let pos = v
                    .as_str()
                    .and_then(|s| choices.iter().position(|c| c == s))
                    .ok_or_else(|| SpaceErrorKind::ConditionValue {
                        parent: parent.to_string(),
                        value: format!("{v:?}"),
                        expected: format!("one of {choices:?}"),
                    })?;
                idx.push(pos);
            }
            AllowedValues::Choices(idx)
        }
        Domain::Int { low, high, .. } => {
            let mut ints = Vec::with_capacity(values.len());
            for v in values {
                let i = v
                    .as_i64()
                    .filter(|i| (*low..=*high).contains(i))
                    .ok_or_else(|| SpaceErrorKind::ConditionValue {
                        parent: parent.to_string(),
                        value: format!("{v:?}"),
                        expected: format!("an integer in [{low}, {high}]"),
                    })?;
                ints.push(i);
            }
            AllowedValues::Ints(ints)
        }
    };
    Ok(Clause {
        parent: index,
        allowed,
    })
}

pub(super) fn build(
    specs: Vec<ParamSpec>,
    source: Option<&str>,
) -> Result<SearchSpace, SpaceError> {
    if specs.is_empty() {
        return Err(SpaceError {
            location: document_location(source),
            kind: SpaceErrorKind::Empty,
        });
    }
    let all_names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let mut params: Vec<Param> = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let err = |kind| SpaceError {
            location: entry_location(source, i, Some(&spec.name)),
            kind,
        };
        if spec.name.trim().is_empty() {
            return Err(err(SpaceErrorKind::EmptyName));
        }
        if let Some(first) = all_names[..i].iter().position(|n| *n == spec.name) {
            return Err(err(SpaceErrorKind::DuplicateName {
                name: spec.name.clone(),
                first: first + 1,
            }));
        }
        let domain = domain(spec).map_err(err)?;
        let mut clauses = Vec::new();
        for (parent, values) in spec.active_if.iter().flatten() {
            clauses.push(clause(&params, &all_names, &spec.name, parent, values).map_err(err)?);
        }
        params.push(Param {
            name: spec.name.clone(),
            domain,
            conditions: clauses,
        });
    }
    Ok(SearchSpace { params, specs })
}
