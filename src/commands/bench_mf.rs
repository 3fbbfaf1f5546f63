//! `dsnn-hpo bench --problem mf-*`: does multi-fidelity pay? Each seed runs the optimizer twice on
//! the same problem ([`crate::eval::mf_problems`]) and the same cost budget in epochs: once with
//! the multi-fidelity budgets and schedule, once single-fidelity (every trial at the full budget).
//!
//! Cost: a trial costs the epochs it trains, `budget`, or `budget - parent's budget` when it
//! continues a lower-budget trial of the same configuration ([`crate::opt::Trial::continues`]),
//! as a resumed checkpoint does. A run stops before the first trial that would take the total
//! over the cost budget, so it never spends more than the budget (and stops less than one trial's
//! cost short of it).
//!
//! Quality: the hypervolume of the *full-budget front*, the non-dominated trials run at the full
//! budget; a configuration only seen at lower budgets has no full-budget value and does not
//! count (it would need full training to be used). The problems are exact at the full budget,
//! so these are the configurations' true values. Objectives are normalised with the problem's
//! fixed ranges and measured against (1.1, 1.1), for the final front and for the front after
//! each quarter of the spent cost (anytime performance).
//!
//! Rank agreement: before the runs, the Spearman correlation between each lower budget and the
//! full budget over 500 random configurations, of each objective and of the *front rank* (the
//! index of a configuration's front in a non-dominated sort). The front rank is what the
//! schedule's promotions sort by (non-dominated sorting, then crowding), so it says whether the
//! low budgets pick the right configurations; no scalarisation (ParEGO weights) is involved.

use std::collections::BTreeMap;
use std::io::Write;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use statrs::distribution::{Binomial, DiscreteCDF};

use crate::eval::mf_problems::{MfBench, MfProblem, REFERENCE};
use crate::opt::hypervolume::hypervolume;
use crate::opt::rank::{front_ranks, spearman};
use crate::opt::smbo::{Smbo, SmboSettings, TrialRecord};
use crate::opt::{Ask, Budgets, Outcome, Schedule, Trial, adaptive, design};

use super::bench::{BenchArgs, BenchError, ModelDataChoice, ScheduleChoice, median};

/// Random configurations of the rank-agreement measurement.
pub const RANK_SAMPLE: usize = 500;

/// A front-rank Spearman correlation at the smallest budget from which on a problem "ranks well".
pub const RANKS_WELL: f64 = 0.5;

/// Trials run at one budget.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetCount {
    pub budget: f64,
    pub trials: usize,
}

/// One optimizer run on a cost budget.
#[derive(Debug, Clone, Serialize)]
pub struct CostRun {
    /// Normalised hypervolume of the full-budget front.
    pub hypervolume: f64,
    /// Epochs spent.
    pub cost: f64,
    pub trials: usize,
    pub trials_per_budget: Vec<BudgetCount>,
    /// Hypervolume of the full-budget front after 25, 50, 75 and 100% of the spent cost.
    pub anytime_hypervolume: [f64; 4],
    /// (epochs spent, hypervolume) after each full-budget trial: the anytime curve's steps.
    #[serde(skip)]
    pub curve: Vec<(f64, f64)>,
    /// The adaptive schedule's rank agreement at the end of the run (empty for the others).
    pub run_agreement: Vec<RunAgreement>,
    /// Where the adaptive schedule sent the cost in each quarter of the spent cost: per
    /// quarter, the share of the epochs its new configurations committed then that went to
    /// each bracket (bracket 0, the full budget, first; expected epochs, promotions included).
    /// Empty for the other schedules.
    pub adaptive_shares: Vec<Vec<f64>>,
}

impl CostRun {
    /// The epochs after which the full-budget front first reached `target` (0 for a target of
    /// 0 or less), `None` if it never did.
    pub fn cost_to_reach(&self, target: f64) -> Option<f64> {
        if target <= 0.0 {
            return Some(0.0);
        }
        self.curve
            .iter()
            .find(|(_, hv)| *hv >= target)
            .map(|(cost, _)| *cost)
    }
}

/// How a lower budget ranked the adaptive schedule's full-budget chains, measured in the run.
#[derive(Debug, Clone, Serialize)]
pub struct RunAgreement {
    pub budget: f64,
    /// Front-rank Spearman correlation with the full budget (null when undefined).
    pub front_rank: f64,
    pub pairs: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct MfSeedResult {
    pub seed: u64,
    pub multi_fidelity: CostRun,
    pub single_fidelity: CostRun,
    /// Multi- over single-fidelity hypervolume (null when the latter is 0).
    pub ratio: f64,
    /// Share of the cost budget after which multi-fidelity's front first reached
    /// single-fidelity's final hypervolume (null if it never did).
    pub cost_to_sf_final: Option<f64>,
    /// The `--against` schedule's run on the same seed and cost budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub against: Option<CostRun>,
}

/// The multi-fidelity runs against those of the `--against` schedule, seed by seed: whether the
/// curve at least matches another schedule's at every quarter of the cost is a paired question,
/// and per-seed hypervolumes at a quarter spread far wider (0 to 0.5) than the medians differ.
#[derive(Debug, Clone, Serialize)]
pub struct AgainstSummary {
    pub schedule: ScheduleChoice,
    pub model_data: ModelDataChoice,
    pub median_hypervolume: f64,
    /// Its median hypervolume after 25, 50, 75 and 100% of the spent cost.
    pub median_anytime: [f64; 4],
    /// Per quarter, the seeds on which the multi-fidelity run's hypervolume was higher, and lower
    /// (the rest tie, e.g. both 0 before either has a point inside the reference box).
    pub higher: [usize; 4],
    pub lower: [usize; 4],
    /// Per quarter, the two-sided sign test's p-value of `higher` against `lower` (1 when all tie).
    pub sign_test_p: [f64; 4],
}

/// Spearman correlations between one budget and the full budget.
#[derive(Debug, Clone, Serialize)]
pub struct RankAgreement {
    pub budget: f64,
    pub front_rank: f64,
    pub objectives: [f64; 2],
}

#[derive(Debug, Clone, Serialize)]
pub struct MfProblemResult {
    pub problem: &'static str,
    /// Over [`RANK_SAMPLE`] random configurations, one entry per budget below the full one.
    pub rank_agreement: Vec<RankAgreement>,
    /// Front-rank agreement at the smallest budget at least [`RANKS_WELL`] (true with one budget).
    pub ranks_well: bool,
    pub seeds: Vec<MfSeedResult>,
    pub median_mf_hypervolume: f64,
    pub median_sf_hypervolume: f64,
    pub median_ratio: f64,
    /// Seeds on which multi-fidelity found the larger hypervolume.
    pub mf_wins: usize,
    pub median_mf_cost: f64,
    pub median_sf_cost: f64,
    pub median_mf_anytime: [f64; 4],
    pub median_sf_anytime: [f64; 4],
    /// Median over seeds of [`MfSeedResult::cost_to_sf_final`], a seed that never reached it
    /// counting as infinite (null when most never did).
    pub median_cost_to_sf_final: Option<f64>,
    /// Seeds on which multi-fidelity reached single-fidelity's final hypervolume within a third
    /// of the cost budget.
    pub sf_final_within_third: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub against: Option<AgainstSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MfReport {
    pub cost_budget: u64,
    pub min_budget: u32,
    pub max_budget: u32,
    pub eta: u32,
    pub schedule: ScheduleChoice,
    pub model_data: ModelDataChoice,
    /// Reference point of the normalised hypervolume.
    pub reference: [f64; 2],
    pub problems: Vec<MfProblemResult>,
}

/// Runs every problem of `problems` on `args.seeds` seeds, multi- and single-fidelity.
pub fn run(
    args: &BenchArgs,
    problems: &[MfProblem],
    out: &mut dyn Write,
) -> Result<MfReport, BenchError> {
    if args.cost_budget == 0 || args.seeds == 0 {
        return Err(BenchError::NoCost);
    }
    let mf_budgets = Budgets {
        schedule: args.schedule.into(),
        ..Budgets::epochs(args.min_budget, args.max_budget, args.eta)
    };
    mf_budgets
        .validate()
        .map_err(|e| BenchError::Settings(e.into()))?;
    let against_budgets = match args.against {
        Some(schedule) => {
            let b = Budgets {
                schedule: schedule.into(),
                ..mf_budgets
            };
            b.validate().map_err(|e| BenchError::Settings(e.into()))?;
            Some(b)
        }
        None => None,
    };
    let sf_budgets = Budgets::epochs(args.max_budget, args.max_budget, args.eta);
    let max = f64::from(args.max_budget);
    let cost_budget = args.cost_budget as f64;
    if !args.json {
        writeln!(
            out,
            "cost budget {} epochs; budgets {}..{} eta {}, {}, model data {}; hypervolume of the \
             full-budget front (trials at {} epochs), normalised, reference (1.1, 1.1)",
            args.cost_budget,
            args.min_budget,
            args.max_budget,
            args.eta,
            enum_name(&args.schedule),
            enum_name(&args.model_data),
            args.max_budget
        )?;
    }
    let mut results = Vec::new();
    for &problem in problems {
        let agreement = rank_agreement(problem, &mf_budgets, RANK_SAMPLE, 0);
        // With one budget (min = max) the low budget is the full one.
        let ranks_well = agreement.first().is_none_or(|a| a.front_rank >= RANKS_WELL);
        if !args.json {
            writeln!(out)?;
            write!(
                out,
                "{}: Spearman vs {} epochs over {RANK_SAMPLE} random configurations, front rank",
                problem.name(),
                args.max_budget
            )?;
            for a in &agreement {
                write!(out, " @{} {:.2}", a.budget, a.front_rank)?;
            }
            if let Some(a) = agreement.first() {
                write!(
                    out,
                    "; f1 @{b} {:.2}, f2 @{b} {:.2}",
                    a.objectives[0],
                    a.objectives[1],
                    b = a.budget
                )?;
            }
            writeln!(
                out,
                " -> {}",
                if ranks_well { "ranks well" } else { "misleads" }
            )?;
            writeln!(
                out,
                "{:>6} {:>7} {:>7} {:>6} {:>7} {:>7} {:>8}  {:<27} {:<27} mf trials per budget",
                "seed",
                "mf_hv",
                "sf_hv",
                "mf/sf",
                "mf_cost",
                "sf_cost",
                "to_sf_hv",
                "mf_hv @25/50/75/100% cost",
                "sf_hv @25/50/75/100% cost",
            )?;
        }
        let mut seeds = Vec::new();
        for seed in args.first_seed..args.first_seed.saturating_add(args.seeds) {
            let bench = MfBench {
                problem,
                max_budget: max,
                seed,
            };
            let model_data = args.model_data.into();
            let mf = run_on_cost(&bench, &mf_budgets, model_data, cost_budget, seed)?;
            let sf = run_on_cost(&bench, &sf_budgets, model_data, cost_budget, seed)?;
            let against = match &against_budgets {
                Some(b) => Some(run_on_cost(
                    &bench,
                    b,
                    args.against_model_data.into(),
                    cost_budget,
                    seed,
                )?),
                None => None,
            };
            let r = MfSeedResult {
                against,
                seed,
                ratio: ratio(mf.hypervolume, sf.hypervolume),
                cost_to_sf_final: mf.cost_to_reach(sf.hypervolume).map(|c| c / cost_budget),
                multi_fidelity: mf,
                single_fidelity: sf,
            };
            if !args.json {
                let per_budget: Vec<String> = r
                    .multi_fidelity
                    .trials_per_budget
                    .iter()
                    .map(|c| format!("{}:{}", c.budget, c.trials))
                    .collect();
                writeln!(
                    out,
                    "{:>6} {:>7.4} {:>7.4} {:>6.3} {:>7} {:>7} {:>8}  {:<27} {:<27} {}",
                    seed,
                    r.multi_fidelity.hypervolume,
                    r.single_fidelity.hypervolume,
                    r.ratio,
                    r.multi_fidelity.cost,
                    r.single_fidelity.cost,
                    share(r.cost_to_sf_final),
                    quarters(&r.multi_fidelity.anytime_hypervolume),
                    quarters(&r.single_fidelity.anytime_hypervolume),
                    per_budget.join(" ")
                )?;
                let run = &r.multi_fidelity.run_agreement;
                if !run.is_empty() {
                    let parts: Vec<String> = run
                        .iter()
                        .map(|a| format!("@{} {:.2} ({} chains)", a.budget, a.front_rank, a.pairs))
                        .collect();
                    writeln!(
                        out,
                        "{:>6} front-rank Spearman vs {} epochs measured in the run: {}",
                        "",
                        args.max_budget,
                        parts.join(", ")
                    )?;
                    let shares: Vec<String> = r
                        .multi_fidelity
                        .adaptive_shares
                        .iter()
                        .map(|s| {
                            let s: Vec<String> = s.iter().map(|x| format!("{x:.2}")).collect();
                            s.join("/")
                        })
                        .collect();
                    writeln!(
                        out,
                        "{:>6} cost to each bracket (bracket 0 first) in each quarter: {}",
                        "",
                        shares.join(" ; ")
                    )?;
                }
                if let (Some(a), Some(schedule)) = (&r.against, args.against) {
                    writeln!(
                        out,
                        "{:>6} against {}: hv {:.4}, @25/50/75/100% cost {}",
                        "",
                        against_name(schedule, args.against_model_data),
                        a.hypervolume,
                        quarters(&a.anytime_hypervolume)
                    )?;
                }
            }
            seeds.push(r);
        }
        let med = |f: &dyn Fn(&MfSeedResult) -> f64| median(seeds.iter().map(f).collect());
        let anytime = |sf: bool| -> [f64; 4] {
            std::array::from_fn(|q| {
                med(&|r| {
                    let run = if sf {
                        &r.single_fidelity
                    } else {
                        &r.multi_fidelity
                    };
                    run.anytime_hypervolume[q]
                })
            })
        };
        let result = MfProblemResult {
            problem: problem.name(),
            ranks_well,
            median_mf_hypervolume: med(&|r| r.multi_fidelity.hypervolume),
            median_sf_hypervolume: med(&|r| r.single_fidelity.hypervolume),
            median_ratio: med(&|r| r.ratio),
            mf_wins: seeds
                .iter()
                .filter(|r| r.multi_fidelity.hypervolume > r.single_fidelity.hypervolume)
                .count(),
            median_mf_cost: med(&|r| r.multi_fidelity.cost),
            median_sf_cost: med(&|r| r.single_fidelity.cost),
            median_mf_anytime: anytime(false),
            median_sf_anytime: anytime(true),
            median_cost_to_sf_final: {
                let m = median(
                    seeds
                        .iter()
                        .map(|r| r.cost_to_sf_final.unwrap_or(f64::INFINITY))
                        .collect(),
                );
                m.is_finite().then_some(m)
            },
            sf_final_within_third: seeds
                .iter()
                .filter(|r| r.cost_to_sf_final.is_some_and(|c| c <= 1.0 / 3.0))
                .count(),
            against: args
                .against
                .map(|schedule| against_summary(&seeds, schedule, args.against_model_data)),
            rank_agreement: agreement,
            seeds,
        };
        if !args.json {
            writeln!(
                out,
                "{:>6} {:>7.4} {:>7.4} {:>6.3} {:>7} {:>7} {:>8}  {:<27} {:<27} mf better on {} of {} seeds",
                "median",
                result.median_mf_hypervolume,
                result.median_sf_hypervolume,
                result.median_ratio,
                result.median_mf_cost,
                result.median_sf_cost,
                share(result.median_cost_to_sf_final),
                quarters(&result.median_mf_anytime),
                quarters(&result.median_sf_anytime),
                result.mf_wins,
                result.seeds.len()
            )?;
            if let Some(a) = &result.against {
                writeln!(out, "{}", against_line(a))?;
            }
        }
        results.push(result);
    }
    if !args.json {
        writeln!(out)?;
        writeln!(
            out,
            "{:<9} {:>13} {:<10} {:>10} {:>10} {:>9} {:>8} {:>13}",
            "problem",
            "front rank @",
            "",
            "median mf",
            "median sf",
            "med mf/sf",
            "mf wins",
            "to sf final"
        )?;
        for r in &results {
            let low = r.rank_agreement.first();
            writeln!(
                out,
                "{:<9} {:>13} {:<10} {:>10.4} {:>10.4} {:>9.3} {:>5}/{} {:>6} ({}/{} <= 1/3)",
                r.problem,
                low.map_or("-".to_string(), |a| format!(
                    "{:.2} @{}",
                    a.front_rank, a.budget
                )),
                if r.ranks_well {
                    "ranks well"
                } else {
                    "misleads"
                },
                r.median_mf_hypervolume,
                r.median_sf_hypervolume,
                r.median_ratio,
                r.mf_wins,
                r.seeds.len(),
                share(r.median_cost_to_sf_final),
                r.sf_final_within_third,
                r.seeds.len()
            )?;
        }
        for r in &results {
            if let Some(a) = &r.against {
                writeln!(out, "{:<9} {}", r.problem, against_line(a))?;
            }
        }
    }
    let report = MfReport {
        cost_budget: args.cost_budget,
        min_budget: args.min_budget,
        max_budget: args.max_budget,
        eta: args.eta,
        schedule: args.schedule,
        model_data: args.model_data,
        reference: REFERENCE,
        problems: results,
    };
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report).map_err(std::io::Error::other)?;
        writeln!(out)?;
    }
    Ok(report)
}

/// The name clap and serde give a flag value (kebab-case).
fn enum_name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|j| j.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn against_name(schedule: ScheduleChoice, model_data: ModelDataChoice) -> String {
    format!("{} ({})", enum_name(&schedule), enum_name(&model_data))
}

/// The seed-by-seed comparison with the `--against` runs; `seeds` all have one.
fn against_summary(
    seeds: &[MfSeedResult],
    schedule: ScheduleChoice,
    model_data: ModelDataChoice,
) -> AgainstSummary {
    let pairs: Vec<(&CostRun, &CostRun)> = seeds
        .iter()
        .filter_map(|r| Some((&r.multi_fidelity, r.against.as_ref()?)))
        .collect();
    let count = |q: usize, higher: bool| {
        pairs
            .iter()
            .filter(|(m, a)| {
                let (x, y) = (m.anytime_hypervolume[q], a.anytime_hypervolume[q]);
                if higher { x > y } else { x < y }
            })
            .count()
    };
    let higher: [usize; 4] = std::array::from_fn(|q| count(q, true));
    let lower: [usize; 4] = std::array::from_fn(|q| count(q, false));
    AgainstSummary {
        schedule,
        model_data,
        median_hypervolume: median(pairs.iter().map(|(_, a)| a.hypervolume).collect()),
        median_anytime: std::array::from_fn(|q| {
            median(
                pairs
                    .iter()
                    .map(|(_, a)| a.anytime_hypervolume[q])
                    .collect(),
            )
        }),
        sign_test_p: std::array::from_fn(|q| sign_test(higher[q], lower[q])),
        higher,
        lower,
    }
}

fn against_line(a: &AgainstSummary) -> String {
    let cells: Vec<String> = (0..4)
        .map(|q| format!("{}-{} (p {:.2})", a.higher[q], a.lower[q], a.sign_test_p[q]))
        .collect();
    format!(
        "against {}: median hv {:.4}, @25/50/75/100% cost {}; seeds higher-lower (sign test) {}",
        against_name(a.schedule, a.model_data),
        a.median_hypervolume,
        quarters(&a.median_anytime),
        cells.join(" / ")
    )
}

/// Two-sided sign test: the probability under "either is as likely higher" of a split at least
/// as uneven as `wins` to `losses` (ties left out); 1 with no untied pair.
pub fn sign_test(wins: usize, losses: usize) -> f64 {
    let n = (wins + losses) as u64;
    match Binomial::new(0.5, n) {
        Ok(b) if n > 0 => (2.0 * b.cdf(wins.min(losses) as u64)).min(1.0),
        _ => 1.0,
    }
}

/// A share of the cost budget, `-` for never.
fn share(c: Option<f64>) -> String {
    c.map_or("-".to_string(), |c| format!("{c:.3}"))
}

fn quarters(q: &[f64; 4]) -> String {
    format!("{:.3}/{:.3}/{:.3}/{:.3}", q[0], q[1], q[2], q[3])
}

fn ratio(mf: f64, sf: f64) -> f64 {
    if sf > 0.0 { mf / sf } else { f64::NAN }
}

/// Per quarter of `spent`, each bracket's share of the epochs committed in it, from the
/// running totals `committed` (cost spent, epochs per bracket); empty without totals.
fn quarter_shares(committed: &[(f64, Vec<f64>)], spent: f64) -> Vec<Vec<f64>> {
    let Some((_, last)) = committed.last() else {
        return Vec::new();
    };
    let zero = vec![0.0; last.len()];
    let at = |q: f64| {
        committed
            .iter()
            .rev()
            .find(|(c, _)| *c <= q * spent)
            .map_or(&zero, |(_, v)| v)
    };
    let ends = [at(0.25), at(0.5), at(0.75), last];
    let mut before = &zero;
    ends.iter()
        .map(|&end| {
            let d: Vec<f64> = end.iter().zip(before).map(|(e, b)| e - b).collect();
            before = end;
            let total: f64 = d.iter().sum();
            d.iter()
                .map(|x| if total > 0.0 { x / total } else { 0.0 })
                .collect()
        })
        .collect()
}

/// Epochs `trial` trains: its budget, less its parent's when it continues one.
pub fn trial_cost(records: &[TrialRecord], trial: &Trial) -> f64 {
    let parent = trial
        .continues
        .and_then(|p| records.get(p as usize))
        .map_or(0.0, |r| r.trial.budget);
    (trial.budget - parent).max(0.0)
}

/// Trials in one cycle of the schedule's brackets and their cost in epochs, promotions paying
/// only the epochs they add: how many trials a cost budget buys, for the initial design's size.
pub fn cycle_trials_and_cost(budgets: &Budgets) -> (usize, f64) {
    let (mut trials, mut cost) = (0, 0.0);
    for bracket in budgets.plan() {
        let mut below = 0.0;
        for rung in bracket {
            trials += rung.n;
            cost += rung.n as f64 * (rung.budget - below);
            below = rung.budget;
        }
    }
    (trials, cost)
}

/// One run of the optimizer (ParEGO) on `bench` until the next trial would exceed `cost_budget`
/// epochs. The initial design follows SMAC's rule for the number of trials the budget buys.
pub fn run_on_cost(
    bench: &MfBench,
    budgets: &Budgets,
    model_data: crate::opt::ModelData,
    cost_budget: f64,
    seed: u64,
) -> Result<CostRun, BenchError> {
    let space = bench.problem.space();
    let (cycle_trials, cycle_cost) = cycle_trials_and_cost(budgets);
    let design_size = match budgets.schedule {
        // It starts as single fidelity, every design configuration a chain through every
        // budget: the design gives the model as many measurements as single fidelity's gives
        // (one per full budget the cost buys, SMAC's rule) in fewer configurations, but enough
        // chains to measure the rank agreement.
        Schedule::Adaptive => adaptive::design_size(
            space.len(),
            (cost_budget / budgets.max) as usize,
            budgets.s_max() + 1,
        ),
        _ => design::default_size(
            space.len(),
            (cost_budget * cycle_trials as f64 / cycle_cost.max(f64::MIN_POSITIVE)) as usize,
        ),
    };
    // Every trial trains at least one epoch (integer budgets >= 1): the cost ends the run first.
    let max_trials = cost_budget.ceil() as usize + 1;
    let mut settings = SmboSettings::new(2, max_trials, budgets.clone(), seed);
    settings.initial_design = Some(design_size);
    settings.model_data = model_data;
    let mut opt = Smbo::new(space, settings)?;
    let mut spent = 0.0;
    let mut counts: BTreeMap<u64, usize> = (0..=budgets.s_max())
        .map(|k| (budgets.budget(k).to_bits(), 0))
        .collect();
    // (cost spent once the trial finished, its normalised objectives if at the full budget)
    let mut history: Vec<(f64, Option<Vec<f64>>)> = Vec::new();
    // (cost spent, epochs the adaptive schedule has committed to each bracket), at each new
    // configuration.
    let mut committed: Vec<(f64, Vec<f64>)> = Vec::new();
    while let Ask::Trial(trial) = opt.ask() {
        if trial.continues.is_none()
            && let Some(a) = opt.scheduler().adaptive()
        {
            committed.push((spent, a.committed().to_vec()));
        }
        let cost = trial_cost(opt.records(), &trial);
        if spent + cost > cost_budget {
            break;
        }
        spent += cost;
        let f = bench.evaluate(&trial.config, trial.budget, trial.id);
        *counts.entry(trial.budget.to_bits()).or_default() += 1;
        let full = (trial.budget >= budgets.max).then(|| bench.problem.normalise(&f));
        history.push((spent, full));
        opt.tell(
            trial.id,
            Outcome::Success {
                objectives: f.to_vec(),
            },
        )?;
    }
    let hv_until = |limit: f64| {
        let points: Vec<Vec<f64>> = history
            .iter()
            .filter(|(c, _)| *c <= limit)
            .filter_map(|(_, p)| p.clone())
            .collect();
        hypervolume(&points, &REFERENCE)
    };
    let mut trials_per_budget: Vec<BudgetCount> = counts
        .into_iter()
        .map(|(b, trials)| BudgetCount {
            budget: f64::from_bits(b),
            trials,
        })
        .collect();
    trials_per_budget.sort_by(|a, b| a.budget.total_cmp(&b.budget));
    let curve = history
        .iter()
        .filter(|(_, p)| p.is_some())
        .map(|(c, _)| (*c, hv_until(*c)))
        .collect();
    let run_agreement = opt
        .scheduler()
        .adaptive()
        .map(|a| {
            a.agreement()
                .into_iter()
                .map(|a| RunAgreement {
                    budget: a.budget,
                    front_rank: a.rho,
                    pairs: a.pairs,
                })
                .collect()
        })
        .unwrap_or_default();
    let adaptive_shares = quarter_shares(&committed, spent);
    Ok(CostRun {
        curve,
        run_agreement,
        adaptive_shares,
        hypervolume: hv_until(spent),
        cost: spent,
        trials: history.len(),
        trials_per_budget,
        anytime_hypervolume: [0.25, 0.5, 0.75, 1.0].map(|q| hv_until(q * spent)),
    })
}

/// Spearman correlations between each budget below the full one and the full budget over `n`
/// random configurations (noise of `seed`), smallest budget first (see the module doc).
pub fn rank_agreement(
    problem: MfProblem,
    budgets: &Budgets,
    n: usize,
    seed: u64,
) -> Vec<RankAgreement> {
    let space = problem.space();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let configs: Vec<_> = (0..n).map(|_| space.sample(&mut rng)).collect();
    let bench = MfBench {
        problem,
        max_budget: budgets.max,
        seed,
    };
    let full: Vec<Vec<f64>> = configs.iter().map(|c| bench.full(c).to_vec()).collect();
    let full_rank = front_ranks(&full);
    (1..=budgets.s_max())
        .rev()
        .map(|k| {
            let b = budgets.budget(k);
            let low: Vec<Vec<f64>> = configs
                .iter()
                .enumerate()
                .map(|(i, c)| bench.evaluate(c, b, i as u64).to_vec())
                .collect();
            let column = |v: &[Vec<f64>], j: usize| v.iter().map(|p| p[j]).collect::<Vec<f64>>();
            RankAgreement {
                budget: b,
                front_rank: spearman(&front_ranks(&low), &full_rank),
                objectives: std::array::from_fn(|j| spearman(&column(&low, j), &column(&full, j))),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::bench::{ProblemChoice, Report};
    use crate::opt::ModelData;

    #[test]
    fn a_promotion_costs_only_the_extra_epochs() {
        let budgets = Budgets::epochs(1, 9, 3);
        let space = MfProblem::Zdt1.space();
        let settings = SmboSettings::new(2, 40, budgets, 0);
        let mut opt = Smbo::random_search(space, settings).unwrap();
        let mut promotions = 0;
        while let Ask::Trial(t) = opt.ask() {
            let cost = trial_cost(opt.records(), &t);
            match t.continues {
                Some(p) => {
                    promotions += 1;
                    let parent = opt.records()[p as usize].trial.budget;
                    assert!(parent < t.budget);
                    assert_eq!(cost, t.budget - parent);
                }
                None => assert_eq!(cost, t.budget),
            }
            let objectives = vec![t.id as f64 % 7.0, 1.0 / (1.0 + t.id as f64)];
            opt.tell(t.id, Outcome::Success { objectives }).unwrap();
        }
        assert!(promotions > 0);
    }

    #[test]
    fn quarter_shares_split_the_running_totals() {
        // Running totals of two brackets at the cost spent: the first half all bracket 0, then
        // bracket 1 takes three quarters of what is committed.
        let committed = vec![
            (0.0, vec![10.0, 0.0]),
            (40.0, vec![20.0, 0.0]),
            (60.0, vec![25.0, 15.0]),
            (90.0, vec![30.0, 30.0]),
        ];
        let q = quarter_shares(&committed, 100.0);
        assert_eq!(q[0], vec![1.0, 0.0]);
        assert_eq!(q[1], vec![1.0, 0.0]);
        assert_eq!(q[2], vec![0.25, 0.75]);
        assert_eq!(q[3], vec![0.25, 0.75]);
        assert!(quarter_shares(&[], 100.0).is_empty());
    }

    #[test]
    fn cycle_cost_of_hyperband_1_27() {
        // Brackets: 27@1, 9@3, 3@9, 1@27 (27 + 18 + 18 + 18 = 81); 12@3, 4@9, 1@27 (36 + 24 +
        // 18 = 78); 6@9, 2@27 (54 + 36 = 90); 4@27 (108).
        let (trials, cost) = cycle_trials_and_cost(&Budgets::epochs(1, 27, 3));
        assert_eq!(trials, 40 + 17 + 8 + 4);
        assert_eq!(cost, 81.0 + 78.0 + 90.0 + 108.0);
    }

    #[test]
    fn runs_stop_on_the_cost_budget() {
        let bench = MfBench {
            problem: MfProblem::Zdt1,
            max_budget: 9.0,
            seed: 1,
        };
        for schedule in [Schedule::Hyperband, Schedule::Asha, Schedule::Adaptive] {
            let budgets = Budgets {
                schedule,
                ..Budgets::epochs(1, 9, 3)
            };
            let run = run_on_cost(&bench, &budgets, ModelData::AllBudgets, 100.0, 1).unwrap();
            // Never over the budget, and stopped only by a trial (at most 9 epochs) not fitting.
            assert!(run.cost <= 100.0 && run.cost > 100.0 - 9.0, "{}", run.cost);
            let n: usize = run.trials_per_budget.iter().map(|c| c.trials).sum();
            assert_eq!(n, run.trials);
            // The cost is the sum of the rungs' new epochs: at least what the top rung's
            // promotions add, at most every trial's full budget.
            let full: f64 = run
                .trials_per_budget
                .iter()
                .map(|c| c.budget * c.trials as f64)
                .sum();
            assert!(
                run.cost < full,
                "promotions paid in full: {} {full}",
                run.cost
            );
            assert!(run.anytime_hypervolume.windows(2).all(|w| w[0] <= w[1]));
            assert_eq!(run.anytime_hypervolume[3], run.hypervolume);
            // The curve's steps: the final front's hypervolume is reached at the last step.
            assert_eq!(run.cost_to_reach(0.0), Some(0.0));
            if run.hypervolume > 0.0 {
                let at = run.cost_to_reach(run.hypervolume).unwrap();
                assert!(at <= run.cost);
                assert_eq!(run.cost_to_reach(run.hypervolume + 1e-9), None);
            }
            assert_eq!(run.run_agreement.is_empty(), schedule != Schedule::Adaptive);
            // Where the adaptive schedule sent the cost in each quarter: one share per bracket,
            // summing to 1 (0 in a quarter without a new configuration).
            if schedule == Schedule::Adaptive {
                assert_eq!(run.adaptive_shares.len(), 4);
                for s in &run.adaptive_shares {
                    assert_eq!(s.len(), budgets.s_max() + 1);
                    let sum = s.iter().sum::<f64>();
                    assert!((sum - 1.0).abs() < 1e-9 || sum == 0.0, "{s:?}");
                }
                // Nothing is known at the start: the first quarter is single fidelity.
                assert_eq!(run.adaptive_shares[0][0], 1.0);
            } else {
                assert!(run.adaptive_shares.is_empty());
            }
        }
        // Single fidelity: 11 trials of 9 epochs fit in 100.
        let run = run_on_cost(
            &bench,
            &Budgets::epochs(9, 9, 3),
            ModelData::AllBudgets,
            100.0,
            1,
        )
        .unwrap();
        assert_eq!((run.cost, run.trials), (99.0, 11));
    }

    #[test]
    fn tiny_bench_reports_both_fidelities() {
        let args = BenchArgs {
            problem: ProblemChoice::MfAll,
            cost_budget: 60,
            max_budget: 9,
            seeds: 2,
            ..BenchArgs::default()
        };
        let mut out = Vec::new();
        let Report::MultiFidelity(report) = crate::commands::bench::run(&args, &mut out).unwrap()
        else {
            panic!("mf problems give the multi-fidelity report");
        };
        let text = String::from_utf8(out).unwrap();
        assert_eq!(report.problems.len(), 4, "{text}");
        for p in &report.problems {
            assert_eq!(p.seeds.len(), 2);
            // Budgets 1 and 3 below 9.
            assert_eq!(p.rank_agreement.len(), 2);
            for s in &p.seeds {
                assert!(s.multi_fidelity.cost <= 60.0 && s.single_fidelity.cost <= 60.0);
                assert!(s.multi_fidelity.trials > s.single_fidelity.trials);
                assert_eq!(s.single_fidelity.trials, 6);
            }
            assert!(text.contains(p.problem));
        }
        assert!(text.contains("median"));
        let json = serde_json::to_value(Report::MultiFidelity(report)).unwrap();
        assert!(json["problems"][0]["seeds"][0]["single_fidelity"]["hypervolume"].is_number());
        assert!(json["problems"][0]["rank_agreement"][0]["front_rank"].is_number());
    }

    #[test]
    fn sign_test_matches_hand_computation() {
        assert_eq!(sign_test(0, 0), 1.0);
        // 5 of 5 one way: 2 / 2^5.
        assert!((sign_test(5, 0) - 0.0625).abs() < 1e-12);
        assert!((sign_test(0, 5) - 0.0625).abs() < 1e-12);
        // An even split is no evidence.
        assert_eq!(sign_test(3, 3), 1.0);
        // 1 of 10: 2 * 11 / 1024.
        assert!((sign_test(1, 9) - 22.0 / 1024.0).abs() < 1e-12);
        assert!((sign_test(10, 22) - 0.050102).abs() < 1e-5);
    }

    #[test]
    fn against_compares_the_runs_seed_by_seed() {
        let args = |against| BenchArgs {
            problem: ProblemChoice::MfZdt1,
            cost_budget: 90,
            max_budget: 9,
            seeds: 3,
            against: Some(against),
            ..BenchArgs::default()
        };
        let run = |a: &BenchArgs| {
            let mut out = Vec::new();
            let Report::MultiFidelity(r) = crate::commands::bench::run(a, &mut out).unwrap() else {
                panic!("mf problems give the multi-fidelity report");
            };
            (r, String::from_utf8(out).unwrap())
        };
        // Against itself: the same runs, every quarter a tie on every seed.
        let (report, _) = run(&args(ScheduleChoice::Hyperband));
        let p = &report.problems[0];
        let a = p.against.as_ref().unwrap();
        assert_eq!(
            (a.higher, a.lower, a.sign_test_p),
            ([0; 4], [0; 4], [1.0; 4])
        );
        assert_eq!(a.median_anytime, p.median_mf_anytime);
        // Against another schedule: the seeds' own runs, counted per quarter.
        let (report, text) = run(&args(ScheduleChoice::Asha));
        let p = &report.problems[0];
        let a = p.against.as_ref().unwrap();
        for q in 0..4 {
            let (higher, lower) = p.seeds.iter().fold((0, 0), |(h, l), s| {
                let x = s.multi_fidelity.anytime_hypervolume[q];
                let y = s.against.as_ref().unwrap().anytime_hypervolume[q];
                (h + usize::from(x > y), l + usize::from(x < y))
            });
            assert_eq!((a.higher[q], a.lower[q]), (higher, lower));
            assert_eq!(a.sign_test_p[q], sign_test(higher, lower));
        }
        // ASHA's runs are its own: it spends the cost on other trials than Hyperband.
        let trials =
            |r: &CostRun| -> Vec<usize> { r.trials_per_budget.iter().map(|c| c.trials).collect() };
        assert!(
            p.seeds
                .iter()
                .any(|s| trials(s.against.as_ref().unwrap()) != trials(&s.multi_fidelity))
        );
        assert!(text.contains("against asha (all-budgets)"), "{text}");
        let json = serde_json::to_value(Report::MultiFidelity(report)).unwrap();
        assert!(json["problems"][0]["against"]["sign_test_p"][0].is_number());
        assert!(json["problems"][0]["seeds"][0]["against"]["hypervolume"].is_number());
    }

    #[test]
    fn validation_problems_run_on_the_seeds_asked_for() {
        let args = BenchArgs {
            problem: ProblemChoice::MfValidation,
            cost_budget: 60,
            max_budget: 9,
            seeds: 2,
            first_seed: 7,
            ..BenchArgs::default()
        };
        let mut out = Vec::new();
        let Report::MultiFidelity(report) = crate::commands::bench::run(&args, &mut out).unwrap()
        else {
            panic!("mf problems give the multi-fidelity report");
        };
        let names: Vec<&str> = report.problems.iter().map(|p| p.problem).collect();
        assert_eq!(names, ["mf-zdt2", "mf-dtlz2-mild"]);
        for p in &report.problems {
            let seeds: Vec<u64> = p.seeds.iter().map(|s| s.seed).collect();
            assert_eq!(seeds, [7, 8]);
        }
    }

    #[test]
    fn problems_rank_as_documented() {
        // What each problem is meant to be: mf-zdt1 ranks well at one epoch, mf-dtlz2 misleads.
        let budgets = Budgets::epochs(1, 27, 3);
        let low = |p| rank_agreement(p, &budgets, 300, 0)[0].front_rank;
        assert!(low(MfProblem::Zdt1) >= RANKS_WELL);
        assert!(low(MfProblem::Dtlz2) < RANKS_WELL);
    }
}
