//! The optimizer: SMAC3-style ParEGO with a random-forest surrogate under Hyperband, driven by ask/tell.
//!
//! [`Smbo`] owns everything and does no I/O and reads no clock: the caller asks for a [`Trial`], runs it
//! however it likes (several at once if it wants), and tells the [`Outcome`] back. Same seed and same
//! sequence of asks and tells give the same trials, which is how a run resumes from its trial log.

pub mod acquisition;
pub mod adaptive;
pub mod design;
pub mod forest;
pub mod hyperband;
pub mod hypervolume;
pub mod parego;
pub mod pareto;
pub mod rank;
pub mod smbo;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::space::Config;

pub use hyperband::{BudgetError, Budgets, Schedule};
pub use smbo::{
    KnownConstraint, Liar, ModelData, SettingsError, Smbo, SmboSettings, Strategy, TrialRecord,
};

/// One evaluation to run: a configuration at a budget (e.g. epochs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    pub id: u64,
    pub config: Config,
    pub budget: f64,
    /// The earlier trial of the same configuration at a lower budget, whose checkpoint the evaluator may
    /// resume from instead of starting over.
    pub continues: Option<u64>,
}

impl Trial {
    /// The budget as whole epochs (budgets are integers when [`Budgets::integer`] is set).
    pub fn epochs(&self) -> u32 {
        self.budget.round().clamp(0.0, f64::from(u32::MAX)) as u32
    }
}

/// The result of a trial.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// One value per objective, all minimised, in the order of the evaluator's objective names.
    Success { objectives: Vec<f64> },
    /// Ran and was measured, but broke a constraint judged after training (e.g. accuracy too low): the
    /// objectives are real and train the cost model, yet the trial is never on the Pareto front, never a
    /// recombination parent, and is promoted only when too few feasible trials are left.
    Infeasible {
        objectives: Vec<f64>,
        /// Which constraints it broke, for the log.
        violated: Vec<String>,
    },
    /// Crashed, timed out, diverged: the surrogate sees the crash cost (1.0 per normalised objective).
    Failed { reason: String },
}

impl Outcome {
    /// The measured objective values: `Some` for successes and infeasible trials alike.
    pub fn objectives(&self) -> Option<&[f64]> {
        match self {
            Outcome::Success { objectives } | Outcome::Infeasible { objectives, .. } => {
                Some(objectives)
            }
            Outcome::Failed { .. } => None,
        }
    }

    /// Whether this is a success that met every measured constraint.
    pub fn is_feasible_success(&self) -> bool {
        matches!(self, Outcome::Success { .. })
    }
}

/// What another copy of the optimizer needs to take over a decision without recomputing it (see
/// [`Smbo::adopt`]): the proposed configuration bit for bit, and where the random stream stood
/// after the ask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AskState {
    /// The configuration's vector form, as `f64::to_bits`: JSON keeps integers exactly.
    pub vector: Vec<u64>,
    /// Words drawn from the random stream so far.
    pub rng: u64,
}

/// Answer of [`Smbo::ask`].
#[derive(Debug, Clone, PartialEq)]
pub enum Ask {
    Trial(Trial),
    /// Nothing can start until a pending trial is told (e.g. a small discrete space is used up).
    Wait,
    /// No more trials will come: the trial limit is reached, or the space is used up and nothing is
    /// pending. Pending trials may still be told.
    Done,
}

#[derive(Debug, Clone, PartialEq, Error)]
pub enum TellError {
    #[error("trial {0} was never asked")]
    UnknownTrial(u64),
    #[error("trial {0} was already told")]
    AlreadyTold(u64),
    #[error("trial {id} returned {got} objective values, expected {expected}")]
    WrongObjectiveCount {
        id: u64,
        expected: usize,
        got: usize,
    },
}
