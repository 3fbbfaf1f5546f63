//! `summary.json`: what a search did as a whole, and why it stopped.

use serde::Serialize;

/// Why a process stopped working on the study.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The study is done: every trial finished.
    TrialsDone,
    WallTime,
    EnergyBudget,
    EmissionsBudget,
    /// This process finished the trials `--max-trials` allowed it.
    MaxTrials,
    /// SIGINT or SIGTERM: running trials were handed back.
    Interrupted,
}

/// `summary.json`: the search as a whole.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The optimizer's trials (the baseline not counted).
    pub trials: usize,
    /// The trial that trained the default configuration at the largest budget after the search.
    pub baseline: Option<u64>,
    pub failed: usize,
    /// Trials that violated a `[[constraints]]` bound (never on the front).
    pub infeasible: usize,
    pub stop: StopReason,
    pub front: Vec<u64>,
    /// Hypervolume of the front, objectives min-max normalised over successful trials,
    /// reference point 1.1 per objective.
    pub hypervolume: f64,
    /// Epochs per budget and the front's hypervolume after each quarter of them.
    pub cost: super::CostReport,
    pub wall_s: f64,
    /// The search's own energy (this process, all phases), with its sources.
    pub search_energy: crate::energy::EnergyRecord,
    /// Sum of the trials' measured energy records.
    pub trials_energy_kwh: f64,
    pub trials_emissions_kg: f64,
}
