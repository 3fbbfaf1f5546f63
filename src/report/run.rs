//! Reading a run directory for a report, with errors that name the file and say what was
//! expected: a report must never panic on a directory it did not write.

use std::path::{Path, PathBuf};

use crate::store::{self, RUN, RunInfo, StoreError, TRIALS, TrialLine};

/// Why a run directory cannot be reported.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {problem}; expected {expected}")]
    Input {
        path: PathBuf,
        problem: String,
        expected: &'static str,
    },
    #[error(
        "{path} line {line}: {message}; expected one JSON trial record per line as `dsnn-hpo optimize` writes"
    )]
    Corrupt {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
}

const RUN_DIR: &str = "a run directory written by `dsnn-hpo optimize --run-dir DIR`";
const RUN_FILE: &str =
    "the run file `dsnn-hpo optimize` writes (objective names and sources, default configuration)";
const TRIALS_FILE: &str =
    "the trial log `dsnn-hpo optimize` writes, one JSON line per finished trial";

fn input(path: PathBuf, problem: impl Into<String>, expected: &'static str) -> ReportError {
    ReportError::Input {
        path,
        problem: problem.into(),
        expected,
    }
}

/// A run directory's meaning and its trial log, checked against each other.
#[derive(Debug, Clone)]
pub struct Run {
    pub dir: PathBuf,
    pub info: RunInfo,
    pub trials: Vec<TrialLine>,
}

impl Run {
    /// Reads `dir/run.json` and `dir/trials.jsonl`. Errors: a missing directory or file, an
    /// unreadable run file, a corrupt log line, a successful trial whose objectives do not match
    /// the run's, a log without any successful trial.
    pub fn load(dir: &Path) -> Result<Run, ReportError> {
        if !dir.exists() {
            return Err(input(dir.to_path_buf(), "no such directory", RUN_DIR));
        }
        if !dir.is_dir() {
            return Err(input(dir.to_path_buf(), "not a directory", RUN_DIR));
        }
        let run_path = dir.join(RUN);
        if !run_path.is_file() {
            return Err(input(run_path, "not found", RUN_FILE));
        }
        let info =
            store::read_run_info(dir).map_err(|e| input(run_path.clone(), detail(e), RUN_FILE))?;
        if info.objectives.is_empty() {
            return Err(input(run_path, "lists no objectives", RUN_FILE));
        }
        let trials_path = dir.join(TRIALS);
        if !trials_path.is_file() {
            return Err(input(trials_path, "not found", TRIALS_FILE));
        }
        let trials = store::read_trials(dir).map_err(|e| match e {
            StoreError::Corrupt {
                path,
                line,
                message,
            } => ReportError::Corrupt {
                path,
                line,
                message,
            },
            e => input(trials_path.clone(), detail(e), TRIALS_FILE),
        })?;
        Run::checked(dir.to_path_buf(), trials_path, info, trials)
    }

    /// A study read from a store: `label` names it in messages (e.g. `study "x" in sqlite://...`).
    pub fn from_records(
        label: &str,
        info: RunInfo,
        trials: Vec<TrialLine>,
    ) -> Result<Run, ReportError> {
        Run::checked(PathBuf::from(label), PathBuf::from(label), info, trials)
    }

    fn checked(
        dir: PathBuf,
        trials_path: PathBuf,
        info: RunInfo,
        trials: Vec<TrialLine>,
    ) -> Result<Run, ReportError> {
        let n = info.objectives.len();
        for t in &trials {
            // Infeasible trials too: the default's may be compared against and the plot draws them.
            if t.measured() && t.objectives.len() != n {
                return Err(input(
                    trials_path,
                    format!(
                        "trial {} has {} objective values but run.json names {} ({})",
                        t.id,
                        t.objectives.len(),
                        n,
                        info.objectives.join(", ")
                    ),
                    "trials of the run that run.json describes",
                ));
            }
        }
        if trials.is_empty() {
            return Err(input(
                trials_path,
                "holds no finished trial yet",
                "at least one successful trial",
            ));
        }
        // A constrained run whose measured trials are all infeasible still has a report: an
        // empty front and the bounds they broke.
        if !trials.iter().any(TrialLine::measured) {
            let first = trials
                .iter()
                .find(|t| t.reason.is_some())
                .unwrap_or(&trials[0]);
            return Err(input(
                trials_path,
                format!(
                    "none of its {} trials succeeded (trial {} failed: {})",
                    trials.len(),
                    first.id,
                    first.reason.as_deref().unwrap_or("no reason logged")
                ),
                "at least one successful or infeasible trial",
            ));
        }
        Ok(Run { dir, info, trials })
    }
}

/// The store's message without its path prefix (the report error names the path itself).
fn detail(e: StoreError) -> String {
    match e {
        StoreError::Io { message, .. } | StoreError::Corrupt { message, .. } => message,
        other => other.to_string(),
    }
}
