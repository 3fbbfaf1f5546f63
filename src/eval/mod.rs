//! Evaluators: what runs a [`Trial`] and turns it into an [`Outcome`].
//!
//! The DSNN trainer, the command objective and the benchmark problems all implement [`Evaluator`].

pub mod command;
pub mod problems;

use thiserror::Error;

use crate::opt::{Outcome, Trial};

/// Runs trials. A trial that crashes, diverges (NaN) or times out is a normal result,
/// `Ok(Outcome::Failed { .. })`; `Err` is reserved for problems that should stop the whole run.
pub trait Evaluator {
    /// Names of the objectives, all minimised, in the order of [`Outcome::Success`]'s values.
    fn objective_names(&self) -> Vec<String>;

    fn evaluate(&mut self, trial: &Trial) -> Result<Outcome, EvalError>;
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
