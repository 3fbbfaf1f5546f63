//! Reports of a finished (or running) search: `dsnn-hpo pareto --run DIR`.
//!
//! [`run`] reads and checks a run directory, [`front`] selects the Pareto front (each
//! configuration at the highest budget it reached), [`baseline`] finds the default
//! configuration's result and the front's best improvements against it, [`Report`] puts them
//! together, and [`table`], [`export`] (CSV, JSON, the run's `front.*` files) and [`svg`] print
//! it. Every number keeps its source: each objective carries run.json's description, each row
//! the meters behind its trial's energy records.

pub mod baseline;
pub mod cost;
pub mod energy;
pub mod export;
pub mod front;
pub mod run;
pub mod summary;
pub mod svg;
pub mod table;

use serde::Serialize;

use crate::space::Config;
use crate::store::{TrialLine, TrialStatus};
pub use baseline::{Comparison, DefaultResult, Improvement};
pub use cost::{BudgetCost, CostReport};
pub use energy::{PerImageSources, RankAgreement};
pub use front::{at_highest_budget, front_of, normalised_hypervolume, same_config};
pub use run::{ReportError, Run};

/// An objective and where its values come from (run.json's `objective_sources`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Objective {
    pub name: String,
    pub source: String,
    /// Measured inference energy: rows carry its 95% CI (`ci95_rel`) where the trial has one.
    pub measured_inference: bool,
}

/// The meters behind one energy record of a trial.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RecordSources {
    pub phase: String,
    pub cpu: String,
    pub gpu: String,
    pub ram: String,
}

/// One reported trial: a front point, the default's result, or both.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    pub id: u64,
    pub budget: f64,
    pub config: Config,
    /// In the order of [`Report::objectives`].
    pub objectives: Vec<f64>,
    /// Per objective, the relative half-width of the 95% confidence interval of a repeated
    /// measurement (`ci95_half_j / mean_j`); null where the objective is not measured inference
    /// energy or the trial's record has no interval (one pass, or an older run).
    pub ci95_rel: Vec<Option<f64>>,
    pub on_front: bool,
    pub is_default: bool,
    /// `success` or `infeasible` (only the default's row can be infeasible: the front never is).
    pub status: TrialStatus,
    /// The constraints an infeasible trial violates.
    pub violated: Vec<String>,
    /// Both views of inference energy per image, joules, whichever one is optimized
    /// (`metrics` of the trial; absent in older runs and for command objectives).
    pub inference_j_per_image: Option<f64>,
    pub opcount_j_per_image: Option<f64>,
    /// Their sources: the meters of the measured inference record (`rapl+estimate`) and
    /// `opcount`; absent with the value.
    pub inference_j_per_image_source: Option<String>,
    pub opcount_j_per_image_source: Option<String>,
    /// The meters behind the trial's energy records, per phase.
    pub energy_sources: Vec<RecordSources>,
}

impl Row {
    /// `measured_inference[j]`: whether objective `j` is measured inference energy.
    fn of(t: &TrialLine, measured_inference: &[bool], on_front: bool, is_default: bool) -> Row {
        let ci = energy::ci95_rel(t);
        Row {
            id: t.id,
            budget: t.budget,
            config: t.config.clone(),
            objectives: t.objectives.clone(),
            ci95_rel: (0..t.objectives.len())
                .map(|j| ci.filter(|_| measured_inference.get(j) == Some(&true)))
                .collect(),
            on_front,
            is_default,
            status: t.status,
            violated: t.violated.clone(),
            inference_j_per_image: t.metrics.as_ref().and_then(|m| m.inference_j_per_image),
            opcount_j_per_image: t.metrics.as_ref().and_then(|m| m.opcount_j_per_image),
            inference_j_per_image_source: t
                .metrics
                .as_ref()
                .and_then(|m| m.inference_j_per_image)
                .and(energy::measured_inference(t))
                .map(energy::meters),
            opcount_j_per_image_source: t
                .metrics
                .as_ref()
                .and_then(|m| m.opcount_j_per_image)
                .map(|_| "opcount".to_string()),
            energy_sources: t
                .energy
                .iter()
                .map(|r| RecordSources {
                    phase: r.phase.clone(),
                    cpu: r.cpu.source.to_string(),
                    gpu: r.gpu.source.to_string(),
                    ram: r.ram.source.to_string(),
                })
                .collect(),
        }
    }

    /// The distinct measuring sources of the trial's records, `none` left out: `rapl+estimate`.
    pub fn sources_short(&self) -> String {
        let mut kinds: Vec<&str> = Vec::new();
        for r in &self.energy_sources {
            for k in [&r.cpu, &r.gpu, &r.ram] {
                if k != "none" && !kinds.contains(&k.as_str()) {
                    kinds.push(k);
                }
            }
        }
        if kinds.is_empty() {
            "-".into()
        } else {
            kinds.join("+")
        }
    }

    /// Every record's sources: `train:cpu=rapl,gpu=none,ram=estimate;inference:...`.
    pub fn sources_long(&self) -> String {
        self.energy_sources
            .iter()
            .map(|r| format!("{}:cpu={},gpu={},ram={}", r.phase, r.cpu, r.gpu, r.ram))
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// What became of the default configuration, for the report's readers.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DefaultInfo {
    pub config: Config,
    /// `evaluated`, `failed` or `not_evaluated`.
    pub status: &'static str,
    pub trial: Option<u64>,
    pub budget: Option<f64>,
    pub on_front: bool,
    /// What an infeasible default violates: it stays the baseline, but is never on the front.
    pub violated: Vec<String>,
    pub note: String,
}

/// How many trials violated one constraint (named as in `violated`, without the `(got ...)`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ViolationCount {
    pub constraint: String,
    pub trials: usize,
}

/// Trials per violated constraint, most violated first; a trial violating two counts for both.
pub fn violation_counts(lines: &[TrialLine]) -> Vec<ViolationCount> {
    let mut counts: Vec<ViolationCount> = Vec::new();
    for t in lines.iter().filter(|t| t.status == TrialStatus::Infeasible) {
        let mut seen: Vec<&str> = Vec::new();
        for v in &t.violated {
            let name = constraint_name(v);
            if seen.contains(&name) {
                continue;
            }
            seen.push(name);
            match counts.iter_mut().find(|c| c.constraint == name) {
                Some(c) => c.trials += 1,
                None => counts.push(ViolationCount {
                    constraint: name.to_string(),
                    trials: 1,
                }),
            }
        }
    }
    counts.sort_by(|a, b| {
        b.trials
            .cmp(&a.trials)
            .then(a.constraint.cmp(&b.constraint))
    });
    counts
}

/// The constraint a violation names: the text before ` (got `.
pub fn constraint_name(violation: &str) -> &str {
    violation
        .split_once(" (got ")
        .map_or(violation, |(name, _)| name)
}

/// Every point of a run, for the plot: successful trials at every budget.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    pub id: u64,
    pub budget: f64,
    pub objectives: Vec<f64>,
}

/// The report of one run directory.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// "default DSNN", or "default configuration" for a command objective or test problem.
    pub default_label: &'static str,
    pub run_dir: String,
    pub objectives: Vec<Objective>,
    /// Configuration columns: the default configuration's parameters, then any others in order
    /// of first appearance among the rows.
    pub parameters: Vec<String>,
    pub trials: usize,
    pub failed: usize,
    /// Trials that trained and were measured but violate a `[[constraints]]` bound.
    pub infeasible: usize,
    /// Infeasible trials per violated constraint.
    pub violations: Vec<ViolationCount>,
    /// Distinct configurations with a successful trial.
    pub configurations: usize,
    /// Normalised hypervolume of the front (objectives min-max scaled over successful trials,
    /// reference 1.1 per objective).
    pub hypervolume: f64,
    /// Epochs per budget and the front's hypervolume after each quarter of them.
    pub cost: CostReport,
    /// The front, plus the default's result when it is not on the front; sorted by the first
    /// objective (loss), then the others, then id.
    pub rows: Vec<Row>,
    pub default: DefaultInfo,
    /// The front against the default; absent when the default has no successful trial.
    pub comparison: Option<Comparison>,
    /// Sources of the rows' `inference_j_per_image` and `opcount_j_per_image`.
    pub per_image_sources: PerImageSources,
    /// Kendall tau-b of measured vs op-count inference energy per image.
    pub rank_agreement: RankAgreement,
    /// Successful trials at every budget, in log order.
    #[serde(skip)]
    pub points: Vec<Point>,
    /// Infeasible trials at every budget, for the plot (grey crosses).
    #[serde(skip)]
    pub infeasible_points: Vec<Point>,
}

impl Report {
    pub fn new(run: &Run) -> Report {
        let lines = &run.trials;
        let front = front_of(lines);
        let default = DefaultResult::find(lines, &run.info.default_config);
        let default_trial = default.trial();
        let is_default = |t: &TrialLine| default_trial.is_some_and(|d| d.id == t.id);
        let names = &run.info.objectives;
        let source = |j: usize| {
            run.info
                .objective_sources
                .get(j)
                .cloned()
                .unwrap_or_else(|| "not recorded in run.json".into())
        };
        let measured: Vec<bool> = names
            .iter()
            .enumerate()
            .map(|(j, n)| energy::is_measured_inference(n, &source(j)))
            .collect();
        let mut rows: Vec<Row> = front
            .iter()
            .map(|t| Row::of(t, &measured, true, is_default(t)))
            .collect();
        let default_on_front = rows.iter().any(|r| r.is_default);
        let mut reported: Vec<&TrialLine> = front.clone();
        if let (Some(d), false) = (default_trial, default_on_front) {
            rows.push(Row::of(d, &measured, false, true));
            reported.push(d);
        }
        rows.sort_by(|a, b| {
            a.objectives
                .iter()
                .zip(&b.objectives)
                .map(|(x, y)| x.total_cmp(y))
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.id.cmp(&b.id))
        });
        let mut parameters: Vec<String> = run
            .info
            .default_config
            .iter()
            .map(|(n, _)| n.to_string())
            .collect();
        for r in &rows {
            for (n, _) in r.config.iter() {
                if !parameters.iter().any(|p| p == n) {
                    parameters.push(n.to_string());
                }
            }
        }
        let objectives = names
            .iter()
            .enumerate()
            .map(|(j, name)| Objective {
                name: name.clone(),
                source: source(j),
                measured_inference: measured[j],
            })
            .collect();
        // A command objective or test problem has a default configuration, not a default DSNN.
        let dsnn = toml::from_str::<toml::Table>(&run.info.config_toml)
            .ok()
            .and_then(|t| {
                t.get("objective")
                    .and_then(|o| o.get("kind"))
                    .and_then(|k| k.as_str().map(|k| k == "dsnn"))
            })
            .unwrap_or(true);
        let default_label = if dsnn {
            "default DSNN"
        } else {
            "default configuration"
        };
        let comparison = default_trial.map(|d| {
            let mut c = baseline::compare(names, &front, d);
            c.headline = c.headline.replace("default DSNN", default_label);
            c
        });
        let (status, trial, budget) = match default {
            DefaultResult::Evaluated(t) => ("evaluated", Some(t.id), Some(t.budget)),
            DefaultResult::Failed(t) => ("failed", Some(t.id), Some(t.budget)),
            DefaultResult::NotEvaluated => ("not_evaluated", None, None),
        };
        let failed = lines
            .iter()
            .filter(|t| t.status == TrialStatus::Failed)
            .count();
        let points_of = |status: TrialStatus| {
            lines
                .iter()
                .filter(|t| t.status == status)
                .map(|t| Point {
                    id: t.id,
                    budget: t.budget,
                    objectives: t.objectives.clone(),
                })
                .collect()
        };
        Report {
            default_label,
            run_dir: run.dir.display().to_string(),
            objectives,
            parameters,
            trials: lines.len(),
            failed,
            infeasible: lines
                .iter()
                .filter(|t| t.status == TrialStatus::Infeasible)
                .count(),
            violations: violation_counts(lines),
            configurations: at_highest_budget(lines).len(),
            hypervolume: normalised_hypervolume(lines, &front),
            cost: CostReport::of(lines),
            rows,
            default: DefaultInfo {
                config: run.info.default_config.clone(),
                status,
                trial,
                budget,
                on_front: default_on_front,
                violated: default_trial
                    .map(|d| d.violated.clone())
                    .unwrap_or_default(),
                note: default.note(),
            },
            comparison,
            per_image_sources: PerImageSources::of(&reported),
            rank_agreement: RankAgreement::of(lines),
            points: points_of(TrialStatus::Success),
            infeasible_points: points_of(TrialStatus::Infeasible),
        }
    }

    pub fn front_len(&self) -> usize {
        self.rows.iter().filter(|r| r.on_front).count()
    }
}

/// A short number for configuration values and axis ticks: at most four significant digits,
/// trailing zeros dropped (`0.01`, `2.5e-6`, `128`).
pub fn fmt_short(v: f64) -> String {
    let s = fmt_value(v);
    match s.split_once('e') {
        Some((m, e)) if m.contains('.') => {
            format!("{}e{e}", m.trim_end_matches('0').trim_end_matches('.'))
        }
        Some(_) => s,
        None if s.contains('.') => s.trim_end_matches('0').trim_end_matches('.').to_string(),
        None => s,
    }
}

/// A number for people: four significant digits, scientific outside [1e-3, 1e5).
pub fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0.0000".into()
    } else if (1e-3..1e5).contains(&a) {
        // a >= 1e-3, so the exponent is small and the subtraction cannot overflow.
        let digits = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
        format!("{v:.digits$}")
    } else {
        format!("{v:.3e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violations_count_once_per_trial_and_constraint_named_before_got() {
        let mut config = Config::new();
        config.insert("lr", 0.1);
        let mut t = TrialLine::success(0, config, 1.0, vec![0.1, 1.0]);
        t.status = TrialStatus::Infeasible;
        t.violated = vec![
            "weight_memory_bits > max 0.5 x default (500) (got 501)".into(),
            "accuracy < min 0.8 (got 0.79)".into(),
        ];
        let mut u = t.clone();
        u.violated = vec!["accuracy < min 0.8 (got 0.5)".into()];
        let mut ok = t.clone();
        ok.status = TrialStatus::Success;
        let c = violation_counts(&[t, u, ok]);
        let got: Vec<(&str, usize)> = c
            .iter()
            .map(|c| (c.constraint.as_str(), c.trials))
            .collect();
        assert_eq!(
            got,
            [
                ("accuracy < min 0.8", 2),
                ("weight_memory_bits > max 0.5 x default (500)", 1)
            ]
        );
        assert_eq!(constraint_name("no got here"), "no got here");
    }

    #[test]
    fn numbers_print_short_and_readable() {
        assert_eq!(fmt_value(0.2), "0.2000");
        assert_eq!(fmt_value(2.5e-6), "2.500e-6");
        assert_eq!(fmt_short(0.01), "0.01");
        assert_eq!(fmt_short(2.5e-6), "2.5e-6");
        assert_eq!(fmt_short(1e-6), "1e-6");
        assert_eq!(fmt_short(128.0), "128");
        assert_eq!(fmt_short(0.0), "0");
        assert_eq!(fmt_short(-0.125), "-0.125");
        assert_eq!(fmt_short(123456.0), "1.235e5");
        assert_eq!(fmt_value(f64::NAN), "NaN");
        assert_eq!(fmt_value(f64::INFINITY), "inf");
    }
}
