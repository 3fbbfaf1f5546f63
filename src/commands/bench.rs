//! `dsnn-hpo bench`: the optimizer on ZDT1-3 and DTLZ2, single fidelity, several seeds.
//!
//! Reports per seed and the median over seeds: the hypervolume of *all* evaluated points against
//! (1.1, 1.1), the number of evaluations, and the optimizer's own time per suggestion (ask + tell,
//! excluding the objective) as a mean over the run and over its last 10 suggestions (when the model
//! holds the most observations).

use std::io::Write;
use std::time::Instant;

use serde::Serialize;
use thiserror::Error;

use crate::eval::problems::Problem;

use crate::opt::hypervolume::hypervolume;
use crate::opt::smbo::{SettingsError, Smbo, SmboSettings, Strategy};
use crate::opt::{Ask, Budgets, Outcome, TellError};

/// Reference point of the reported hypervolume.
pub const REFERENCE: [f64; 2] = [1.1, 1.1];

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProblemChoice {
    Zdt1,
    Zdt2,
    Zdt3,
    Dtlz2,
    All,
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
    /// Test problem (6 variables, 2 objectives), or all of them.
    #[arg(long, value_enum, default_value_t = ProblemChoice::All)]
    pub problem: ProblemChoice,
    /// Evaluations per run.
    #[arg(long, default_value_t = 100)]
    pub evals: usize,
    /// Runs per problem, with seeds 0, 1, ...
    #[arg(long, default_value_t = 5)]
    pub seeds: u64,
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
            seeds: 5,
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
}

/// Runs the benchmark and writes the table (or JSON) to `out`.
pub fn run(args: &BenchArgs, out: &mut dyn Write) -> Result<BenchReport, BenchError> {
    if args.evals == 0 || args.seeds == 0 {
        return Err(BenchError::Empty);
    }
    let problems: Vec<Problem> = match args.problem {
        ProblemChoice::Zdt1 => vec![Problem::Zdt1],
        ProblemChoice::Zdt2 => vec![Problem::Zdt2],
        ProblemChoice::Zdt3 => vec![Problem::Zdt3],
        ProblemChoice::Dtlz2 => vec![Problem::Dtlz2],
        ProblemChoice::All => Problem::ALL.to_vec(),
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
        for seed in 0..args.seeds {
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

fn median(mut v: Vec<f64>) -> f64 {
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
            json: false,
        };
        let mut out = Vec::new();
        let report = run(&args, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 1 + 2 + 1, "{text}");
        assert!(text.lines().last().unwrap().contains("median"));
        assert_eq!(report.problems[0].seeds.len(), 2);
        assert!(report.problems[0].seeds.iter().all(|s| s.evaluations == 12));
    }
}
