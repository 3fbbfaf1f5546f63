//! Evaluators: what runs a [`Trial`] and turns it into an [`Outcome`].
//!
//! The DSNN trainer, the command objective and the benchmark problems all implement [`Evaluator`].

pub mod command;
#[cfg(feature = "dsnn")]
pub mod dsnn;
pub mod mf_problems;
pub mod problems;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::energy::EnergyRecord;
use crate::energy::layers::LayerRow;
use crate::opt::{Outcome, Trial};

/// One evaluated trial with what the log keeps besides the objectives.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub outcome: Outcome,
    pub metrics: Option<Metrics>,
    pub energy: Vec<EnergyRecord>,
    /// Per-layer inference energy, when asked for (`[energy] per_layer`).
    pub per_layer: Option<Vec<LayerRow>>,
}

impl Evaluation {
    /// An outcome with nothing else recorded.
    pub fn of(outcome: Outcome) -> Evaluation {
        Evaluation {
            outcome,
            metrics: None,
            energy: Vec::new(),
            per_layer: None,
        }
    }
}

/// Runs trials. A trial that crashes, diverges (NaN) or times out is a normal result,
/// `Ok(Outcome::Failed { .. })`; `Err` is reserved for problems that should stop the whole run.
pub trait Evaluator {
    /// Names of the objectives, all minimised, in the order of [`Outcome::Success`]'s values.
    fn objective_names(&self) -> Vec<String>;

    /// Where each objective's values come from, for the report (e.g. "measured (rapl)").
    fn objective_sources(&self) -> Vec<String> {
        self.objective_names()
            .iter()
            .map(|n| format!("{n} as the evaluator returns it"))
            .collect()
    }

    fn evaluate(&mut self, trial: &Trial) -> Result<Outcome, EvalError>;

    /// The outcome with metrics and energy records, for evaluators that measure them.
    fn evaluate_fully(&mut self, trial: &Trial) -> Result<Evaluation, EvalError> {
        self.evaluate(trial).map(Evaluation::of)
    }
}

/// A fatal evaluation problem.
#[derive(Debug, Error)]
pub enum EvalError {
    #[error("cannot start command \"{program}\": {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration does not fit the evaluator: {0}")]
    Config(String),
    #[error("{0}")]
    Other(String),
}

/// JSON has no NaN: a diverged trial's losses are written as null and read back as NaN.
mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub valid_accuracy: f64,
    #[serde(with = "nan_as_null")]
    pub valid_loss: f64,
    #[serde(with = "nan_as_null")]
    pub train_loss: f64,
    pub epochs_trained: usize,
    /// The epoch training started from: 0, or the saved state's epoch when the trial continued
    /// a lower-budget trial (the state came from this machine or through the study store).
    #[serde(default)]
    pub start_epoch: usize,
    pub images_per_s: f64,
    /// Measured inference energy per image, joules: the mean repeated validation pass over its
    /// images (source in the trial's `inference` record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_j_per_image: Option<f64>,
    /// Op-count model energy per image, joules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opcount_j_per_image: Option<f64>,
    /// Parameters (batch norm included) and weight memory in bits of the design.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_memory_bits: Option<u64>,
}
