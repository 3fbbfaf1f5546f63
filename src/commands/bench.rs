//! `dsnn-hpo bench`: the optimizer on ZDT1-3 and DTLZ2, single fidelity, several seeds; the
//! multi-fidelity problems (`mf-*`) are run by [`super::bench_mf`].
//!
//! Reports per seed and the median over seeds: the hypervolume of *all* evaluated points against
//! (1.1, 1.1), the number of evaluations, and the optimizer's own time per suggestion (ask + tell,
//! excluding the objective) as a mean over the run and over its last 10 suggestions (when the model
//! holds the most observations).

use std::io::Write;
use std::time::Instant;

use serde::Serialize;
use thiserror::Error;

use crate::eval::mf_problems::MfProblem;
use crate::eval::problems::Problem;

use super::bench_mf::MfReport;
use crate::opt::hypervolume::hypervolume;
use crate::opt::smbo::{SettingsError, Smbo, SmboSettings, Strategy};
use crate::opt::{Ask, Budgets, ModelData, Outcome, Schedule, TellError};

/// Reference point of the reported hypervolume.
pub const REFERENCE: [f64; 2] = [1.1, 1.1];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemChoice {
    Zdt1,
    Zdt2,
    Zdt3,
    Dtlz2,
    All,
    /// Multi-fidelity ZDT1 (low budgets rank well); run on a cost budget.
    MfZdt1,
    /// Multi-fidelity ZDT3 (low budgets rank moderately).
    MfZdt3,
    /// Multi-fidelity DTLZ2 (low budgets mislead).
    MfDtlz2,
    /// Multi-fidelity mixed categorical/integer DSNN-like problem (fast learners end worse).
    MfDsnn,
    /// All four multi-fidelity problems above.
    MfAll,
    /// Multi-fidelity ZDT2 (validation only: not used to tune the schedules).
    MfZdt2,
    /// Multi-fidelity DTLZ2 with a milder, linear bias and more noise (validation only).
    MfDtlz2Mild,
    /// Both validation problems.
    MfValidation,
}

impl ProblemChoice {
    /// The multi-fidelity problems this choice names; empty for the single-fidelity ones.
    pub fn multi_fidelity(self) -> Vec<MfProblem> {
        match self {
            ProblemChoice::MfZdt1 => vec![MfProblem::Zdt1],
            ProblemChoice::MfZdt3 => vec![MfProblem::Zdt3],
            ProblemChoice::MfDtlz2 => vec![MfProblem::Dtlz2],
            ProblemChoice::MfDsnn => vec![MfProblem::Dsnn],
            ProblemChoice::MfAll => MfProblem::ALL.to_vec(),
            ProblemChoice::MfZdt2 => vec![MfProblem::Zdt2],
            ProblemChoice::MfDtlz2Mild => vec![MfProblem::Dtlz2Mild],
            ProblemChoice::MfValidation => MfProblem::VALIDATION.to_vec(),
            _ => Vec::new(),
        }
    }
}

/// Hyperband schedule of the multi-fidelity runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleChoice {
    Hyperband,
    Asha,
    SuccessiveHalving,
    /// Cost-aware: bracket shares follow the measured rank agreement (`[fidelity] schedule = "adaptive"`).
    Adaptive,
}

impl From<ScheduleChoice> for Schedule {
    fn from(s: ScheduleChoice) -> Schedule {
        match s {
            ScheduleChoice::Hyperband => Schedule::Hyperband,
            ScheduleChoice::Asha => Schedule::Asha,
            ScheduleChoice::SuccessiveHalving => Schedule::SuccessiveHalving,
            ScheduleChoice::Adaptive => Schedule::Adaptive,
        }
    }
}

/// `[search] model_data` of the multi-fidelity runs (see [`ModelData`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelDataChoice {
    OneBudget,
    AllBudgets,
}

impl From<ModelDataChoice> for ModelData {
    fn from(m: ModelDataChoice) -> ModelData {
        match m {
            ModelDataChoice::OneBudget => ModelData::OneBudget,
            ModelDataChoice::AllBudgets => ModelData::AllBudgets,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerChoice {
    /// Random forest + EI on ParEGO scalarisations.
    Parego,
    /// Uniform random search.
    Random,
}

/// Command-line arguments of the benchmark.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Test problem (2 objectives), or all of them; `mf-*` are the multi-fidelity problems.
    #[arg(long, value_enum, default_value_t = ProblemChoice::All)]
    pub problem: ProblemChoice,
    /// Evaluations per run (single-fidelity problems).
    #[arg(long, default_value_t = 100)]
    pub evals: usize,
    /// Multi-fidelity problems: epochs a run may spend in total (a promotion costs the epochs it
    /// adds to its parent's).
    #[arg(long, default_value_t = 2700)]
    pub cost_budget: u64,
    /// Multi-fidelity problems: smallest budget (epochs).
    #[arg(long, default_value_t = 1)]
    pub min_budget: u32,
    /// Multi-fidelity problems: full budget (epochs); the front is measured there.
    #[arg(long, default_value_t = 27)]
    pub max_budget: u32,
    /// Multi-fidelity problems: Hyperband's eta.
    #[arg(long, default_value_t = 3)]
    pub eta: u32,
    /// Multi-fidelity problems: the schedule of the multi-fidelity runs.
    #[arg(long, value_enum, default_value_t = ScheduleChoice::Hyperband)]
    pub schedule: ScheduleChoice,
    /// Multi-fidelity problems: which trials the surrogate learns from.
    #[arg(long, value_enum, default_value_t = ModelDataChoice::AllBudgets)]
    pub model_data: ModelDataChoice,
    /// Runs per problem, with seeds `first-seed`, `first-seed + 1`, ...
    #[arg(long, default_value_t = 5)]
    pub seeds: u64,
    /// The first seed: a later range (e.g. `--first-seed 100`) checks a change on seeds it was
    /// not tried on.
    #[arg(long, default_value_t = 0)]
    pub first_seed: u64,
    /// Multi-fidelity problems: also run this schedule on every seed and compare the two
    /// multi-fidelity runs' hypervolume after each quarter of the cost, seed by seed.
    #[arg(long, value_enum)]
    pub against: Option<ScheduleChoice>,
    /// Multi-fidelity problems: which trials the surrogate of the `--against` runs learns from.
    #[arg(long, value_enum, default_value_t = ModelDataChoice::AllBudgets, requires = "against")]
    pub against_model_data: ModelDataChoice,
    #[arg(long, value_enum, default_value_t = OptimizerChoice::Parego)]
    pub optimizer: OptimizerChoice,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl Default for BenchArgs {
    fn default() -> Self {
        BenchArgs {
            problem: ProblemChoice::All,
            evals: 100,
            cost_budget: 2700,
            min_budget: 1,
            max_budget: 27,
            eta: 3,
            schedule: ScheduleChoice::Hyperband,
            model_data: ModelDataChoice::AllBudgets,
            seeds: 5,
            first_seed: 0,
            against: None,
            against_model_data: ModelDataChoice::AllBudgets,
            optimizer: OptimizerChoice::Parego,
            json: false,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SeedResult {
    pub seed: u64,
    pub hypervolume: f64,
    pub evaluations: usize,
    pub ms_per_suggestion: f64,
    pub ms_per_suggestion_last10: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProblemResult {
    pub problem: &'static str,
    pub optimizer: OptimizerChoice,
    pub seeds: Vec<SeedResult>,
    pub median_hypervolume: f64,
    pub median_evaluations: f64,
    pub median_ms_per_suggestion: f64,
    pub median_ms_per_suggestion_last10: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub reference: [f64; 2],
    pub evals: usize,
    pub problems: Vec<ProblemResult>,
}

#[derive(Debug, Error)]
pub enum BenchError {
    #[error("writing the benchmark report: {0}")]
    Io(#[from] std::io::Error),
    #[error("optimizer settings: {0}")]
    Settings(#[from] SettingsError),
    #[error("optimizer rejected a result: {0}")]
    Tell(#[from] TellError),
    #[error("--evals must be at least 1 and --seeds at least 1")]
    Empty,
    #[error("--cost-budget must be at least 1 and --seeds at least 1")]
    NoCost,
}

/// What [`run`] measured: the single-fidelity table or the multi-fidelity comparison.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Report {
    SingleFidelity(BenchReport),
    MultiFidelity(MfReport),
}

/// Runs the benchmark and writes the table (or JSON) to `out`.
pub fn run(args: &BenchArgs, out: &mut dyn Write) -> Result<Report, BenchError> {
    let mf = args.problem.multi_fidelity();
    if !mf.is_empty() {
        return super::bench_mf::run(args, &mf, out).map(Report::MultiFidelity);
    }
    run_single(args, out).map(Report::SingleFidelity)
}

/// The single-fidelity benchmark (ZDT1-3, DTLZ2 on a number of evaluations).
fn run_single(args: &BenchArgs, out: &mut dyn Write) -> Result<BenchReport, BenchError> {
    if args.evals == 0 || args.seeds == 0 {
        return Err(BenchError::Empty);
    }
    let problems: Vec<Problem> = match args.problem {
        ProblemChoice::Zdt1 => vec![Problem::Zdt1],
        ProblemChoice::Zdt2 => vec![Problem::Zdt2],
        ProblemChoice::Zdt3 => vec![Problem::Zdt3],
        ProblemChoice::Dtlz2 => vec![Problem::Dtlz2],
        _ => Problem::ALL.to_vec(),
    };
    if !args.json {
        writeln!(
            out,
            "{:<7} {:<9} {:>6} {:>11} {:>6} {:>8} {:>12}",
            "problem", "optimizer", "seed", "hypervolume", "evals", "ms/sugg", "ms/sugg@end"
        )?;
    }
    let mut results = Vec::new();
    for problem in problems {
        let mut seeds = Vec::new();
        for seed in args.first_seed..args.first_seed.saturating_add(args.seeds) {
            let r = run_one(problem, args.optimizer, args.evals, seed)?;
            if !args.json {
                writeln!(
                    out,
                    "{:<7} {:<9} {:>6} {:>11.4} {:>6} {:>8.2} {:>12.2}",
                    problem.name(),
                    optimizer_name(args.optimizer),
                    r.seed,
                    r.hypervolume,
                    r.evaluations,
                    r.ms_per_suggestion,
                    r.ms_per_suggestion_last10
                )?;
            }
            seeds.push(r);
        }
        let med = |f: fn(&SeedResult) -> f64| median(seeds.iter().map(f).collect());
        let result = ProblemResult {
            problem: problem.name(),
            optimizer: args.optimizer,
            median_hypervolume: med(|r| r.hypervolume),
            median_evaluations: med(|r| r.evaluations as f64),
            median_ms_per_suggestion: med(|r| r.ms_per_suggestion),
            median_ms_per_suggestion_last10: med(|r| r.ms_per_suggestion_last10),
            seeds,
        };
        if !args.json {
            writeln!(
                out,
                "{:<7} {:<9} {:>6} {:>11.4} {:>6} {:>8.2} {:>12.2}",
                result.problem,
                optimizer_name(args.optimizer),
                "median",
                result.median_hypervolume,
                result.median_evaluations,
                result.median_ms_per_suggestion,
                result.median_ms_per_suggestion_last10
            )?;
        }
        results.push(result);
    }
    let report = BenchReport {
        reference: REFERENCE,
        evals: args.evals,
        problems: results,
    };
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report).map_err(std::io::Error::other)?;
        writeln!(out)?;
    }
    Ok(report)
}

fn optimizer_name(o: OptimizerChoice) -> &'static str {
    match o {
        OptimizerChoice::Parego => "parego",
        OptimizerChoice::Random => "random",
    }
}

/// One run: sequential ask, evaluate, tell.
pub fn run_one(
    problem: Problem,
    optimizer: OptimizerChoice,
    evals: usize,
    seed: u64,
) -> Result<SeedResult, BenchError> {
    let space = problem.space();
    let mut settings = SmboSettings::new(2, evals, Budgets::single(1.0), seed);
    settings.strategy = match optimizer {
        OptimizerChoice::Parego => Strategy::ParEgo,
        OptimizerChoice::Random => Strategy::Random,
    };
    let names: Vec<String> = (1..=crate::eval::problems::N_VARS)
        .map(|i| format!("x{i}"))
        .collect();
    let mut opt = Smbo::new(space, settings)?;
    let mut points = Vec::with_capacity(evals);
    let mut times = Vec::with_capacity(evals);
    loop {
        let start = Instant::now();
        let trial = match opt.ask() {
            Ask::Trial(t) => t,
            Ask::Wait | Ask::Done => break,
        };
        let mut spent = start.elapsed();
        let x: Vec<f64> = names
            .iter()
            .map(|n| trial.config.f64(n).unwrap_or(f64::NAN))
            .collect();
        let f = problem.evaluate(&x).to_vec();
        points.push(f.clone());
        let start = Instant::now();
        opt.tell(trial.id, Outcome::Success { objectives: f })?;
        spent += start.elapsed();
        times.push(spent.as_secs_f64() * 1e3);
    }
    let mean = |t: &[f64]| {
        if t.is_empty() {
            0.0
        } else {
            t.iter().sum::<f64>() / t.len() as f64
        }
    };
    Ok(SeedResult {
        seed,
        hypervolume: hypervolume(&points, &REFERENCE),
        evaluations: points.len(),
        ms_per_suggestion: mean(&times),
        ms_per_suggestion_last10: mean(&times[times.len().saturating_sub(10)..]),
    })
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn small_run_prints_rows_and_median() {
        let args = BenchArgs {
            problem: ProblemChoice::Zdt1,
            evals: 12,
            seeds: 2,
            optimizer: OptimizerChoice::Random,
            ..BenchArgs::default()
        };
        let mut out = Vec::new();
        let Report::SingleFidelity(report) = run(&args, &mut out).unwrap() else {
            panic!("a single-fidelity problem gives the single-fidelity report");
        };
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 1 + 2 + 1, "{text}");
        assert!(text.lines().last().unwrap().contains("median"));
        assert_eq!(report.problems[0].seeds.len(), 2);
        assert!(report.problems[0].seeds.iter().all(|s| s.evaluations == 12));
    }
}
