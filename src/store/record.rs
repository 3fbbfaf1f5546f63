//! The records a study keeps: what each finished trial was and produced ([`TrialLine`]), and what
//! its columns mean ([`RunInfo`]). The same records go to the store and to the run directory's
//! exports, so `pareto --run DIR` and users' own tools read what the store holds.

use serde::{Deserialize, Serialize};

use crate::energy::EnergyRecord;
pub use crate::eval::Metrics;
use crate::opt::{Outcome, Trial};
use crate::space::Config;

/// How a trial ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrialStatus {
    Success,
    /// Trained and measured, but a `[[constraints]]` bound is violated (`violated` says which):
    /// never on the front.
    Infeasible,
    /// Crashed, diverged (NaN) or failed otherwise; `reason` says why.
    Failed,
}

/// One finished trial, as written to `trials.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialLine {
    pub id: u64,
    pub config: Config,
    /// Epochs the trial reached.
    pub budget: f64,
    /// The trial whose saved state this one continued from.
    pub continued_from: Option<u64>,
    pub status: TrialStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Objective values in the order of `RunInfo::objectives`; empty when failed.
    pub objectives: Vec<f64>,
    /// The constraints an infeasible trial violates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violated: Vec<String>,
    /// Per-layer inference energy, when `[energy] per_layer` asks for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_layer: Option<Vec<crate::energy::layers::LayerRow>>,
    /// Validation metrics of the trained network, when training finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    /// Energy records of the trial's phases (training, inference), each with its sources.
    #[serde(default)]
    pub energy: Vec<EnergyRecord>,
    /// Seconds from start to finish of the trial.
    pub wall_s: f64,
    /// Unix time the trial finished.
    pub finished_unix_s: f64,
    /// The default configuration at the largest budget, trained after the search as the
    /// baseline the report compares against; not part of the optimizer's history.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub baseline: bool,
}

impl TrialLine {
    /// Trained and measured (successful or infeasible): its objectives are real.
    pub fn measured(&self) -> bool {
        self.status != TrialStatus::Failed
    }

    /// A successful trial without metrics or energy records: for tools and tests that write
    /// logs of their own.
    pub fn success(id: u64, config: Config, budget: f64, objectives: Vec<f64>) -> TrialLine {
        TrialLine {
            id,
            config,
            budget,
            continued_from: None,
            status: TrialStatus::Success,
            reason: None,
            objectives,
            violated: Vec::new(),
            per_layer: None,
            metrics: None,
            energy: Vec::new(),
            wall_s: 1.0,
            finished_unix_s: 0.0,
            baseline: false,
        }
    }
}

/// What the columns of the log mean.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// Objective names, e.g. ["loss", "energy_kwh"]; all minimised.
    pub objectives: Vec<String>,
    /// Where each objective comes from, e.g. "1 - validation accuracy",
    /// "inference energy per validation pass, measured (rapl/estimate per record)".
    pub objective_sources: Vec<String>,
    /// The search space's default configuration: the baseline the report compares against.
    pub default_config: Config,
    /// Hash of the settings that must not change on resume.
    pub meta_hash: String,
    /// The default configuration's values that relative `[[constraints]]` bounds scale (a
    /// measured one is measured once, before the first trial, and kept for a resume).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub constraint_reference: crate::constraint::Values,
    /// The resolved run configuration, as TOML text.
    pub config_toml: String,
}

/// Baseline trials are numbered from here, apart from the optimizer's own.
pub const BASELINE_IDS: u64 = 1_000_000;

impl TrialLine {
    /// The record of `trial` ending with `outcome`.
    pub fn of(
        trial: &Trial,
        outcome: &Outcome,
        metrics: Option<Metrics>,
        energy: Vec<EnergyRecord>,
        wall_s: f64,
        finished_unix_s: f64,
    ) -> TrialLine {
        let (status, objectives, reason, violated) = match outcome {
            Outcome::Success { objectives } => {
                (TrialStatus::Success, objectives.clone(), None, Vec::new())
            }
            Outcome::Infeasible {
                objectives,
                violated,
            } => (
                TrialStatus::Infeasible,
                objectives.clone(),
                None,
                violated.clone(),
            ),
            Outcome::Failed { reason } => (
                TrialStatus::Failed,
                Vec::new(),
                Some(reason.clone()),
                Vec::new(),
            ),
        };
        TrialLine {
            id: trial.id,
            config: trial.config.clone(),
            budget: trial.budget,
            continued_from: trial.continues,
            status,
            reason,
            objectives,
            violated,
            per_layer: None,
            metrics,
            energy,
            wall_s,
            finished_unix_s,
            baseline: trial.id >= BASELINE_IDS,
        }
    }

    /// What the optimizer is told of this trial.
    pub fn outcome(&self) -> Outcome {
        match self.status {
            TrialStatus::Success => Outcome::Success {
                objectives: self.objectives.clone(),
            },
            TrialStatus::Infeasible => Outcome::Infeasible {
                objectives: self.objectives.clone(),
                violated: self.violated.clone(),
            },
            TrialStatus::Failed => Outcome::Failed {
                reason: self.reason.clone().unwrap_or_default(),
            },
        }
    }

    /// The trial this line records.
    pub fn trial(&self) -> Trial {
        Trial {
            id: self.id,
            config: self.config.clone(),
            budget: self.budget,
            continues: self.continued_from,
        }
    }
}

impl TrialLine {
    /// The record the store writes for a trial whose workers went silent `times` times (the last
    /// one `owner`), when it is not tried again.
    pub fn failed_silent(
        trial: &Trial,
        times: u32,
        owner: &super::Owner,
        finished_unix_s: f64,
    ) -> TrialLine {
        let outcome = Outcome::Failed {
            reason: format!(
                "its worker went silent {times} time(s) (last: {owner}); not tried again"
            ),
        };
        TrialLine::of(trial, &outcome, None, Vec::new(), 0.0, finished_unix_s)
    }
}
