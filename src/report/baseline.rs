//! The default configuration's result and the front's best improvements against it, in the
//! paper's headline form ("x% lower loss, y% less energy than the default DSNN").

use serde::Serialize;

use super::front::same_config;
use crate::space::Config;
use crate::store::{TrialLine, TrialStatus};

/// What became of the search space's default configuration.
#[derive(Debug, Clone, Copy)]
pub enum DefaultResult<'a> {
    /// Its successful trial at the highest budget it reached.
    Evaluated(&'a TrialLine),
    /// Every trial of it failed; the one at the highest budget.
    Failed(&'a TrialLine),
    /// The search never proposed it.
    NotEvaluated,
}

impl<'a> DefaultResult<'a> {
    pub fn find(lines: &'a [TrialLine], default: &Config) -> DefaultResult<'a> {
        let mut ok: Option<&TrialLine> = None;
        let mut failed: Option<&TrialLine> = None;
        for t in lines.iter().filter(|t| same_config(&t.config, default)) {
            let slot = match t.status {
                // An infeasible default is still the baseline the report compares against.
                TrialStatus::Success | TrialStatus::Infeasible => &mut ok,
                TrialStatus::Failed => &mut failed,
            };
            if slot.is_none_or(|b| b.budget < t.budget) {
                *slot = Some(t);
            }
        }
        match (ok, failed) {
            (Some(t), _) => DefaultResult::Evaluated(t),
            (None, Some(t)) => DefaultResult::Failed(t),
            (None, None) => DefaultResult::NotEvaluated,
        }
    }

    pub fn trial(&self) -> Option<&'a TrialLine> {
        match self {
            DefaultResult::Evaluated(t) => Some(t),
            _ => None,
        }
    }

    /// One sentence for a report when there is nothing to compare against.
    pub fn note(&self) -> String {
        match self {
            DefaultResult::Evaluated(t) => format!(
                "the default configuration is trial {} at budget {}",
                t.id,
                fmt_budget(t.budget)
            ),
            DefaultResult::Failed(t) => format!(
                "the default configuration failed (trial {} at budget {}: {}); nothing to compare against",
                t.id,
                fmt_budget(t.budget),
                t.reason.as_deref().unwrap_or("no reason logged")
            ),
            DefaultResult::NotEvaluated => {
                "the default configuration was never evaluated in this run; nothing to compare against"
                    .into()
            }
        }
    }
}

/// The largest relative reduction of one objective among the compared front points.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Improvement {
    pub objective: String,
    /// "lower loss", "less energy", ... as the headline says it.
    pub phrase: String,
    pub default_value: f64,
    pub value: f64,
    /// `(default - value) / default`, in percent.
    pub percent: f64,
    pub trial: u64,
    pub budget: f64,
}

/// The front against the default configuration.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Comparison {
    pub default_trial: u64,
    pub default_budget: f64,
    /// Budgets of the front points that were compared.
    pub compared_budgets: Vec<f64>,
    /// Whether the compared front points share the default's budget.
    pub same_budget: bool,
    /// Which budgets were compared, in words.
    pub budgets_note: String,
    /// One per objective that some compared front point improves; objectives in run order.
    pub improvements: Vec<Improvement>,
    /// Objectives no compared front point improves.
    pub not_improved: Vec<String>,
    /// Front points better than the default in every objective.
    pub dominating: Vec<u64>,
    /// "x% lower loss, y% less energy than the default DSNN", or why there is none.
    pub headline: String,
}

/// How the headline names a reduction of objective `name` (index `j` of `names`).
pub fn phrase(names: &[String], j: usize) -> String {
    let name = names[j].as_str();
    let kind = |n: &str| {
        let n = n.to_ascii_lowercase();
        if n.contains("co2") || n.contains("emission") {
            Some("emissions")
        } else if n.contains("kwh") || n.contains("energy") || n.ends_with("_j") {
            Some("energy")
        } else {
            None
        }
    };
    match kind(name) {
        Some(k) => {
            let same_kind = names.iter().filter(|n| kind(n) == Some(k)).count();
            if same_kind > 1 {
                format!("less {k} ({name})")
            } else {
                format!("less {k}")
            }
        }
        None => format!("lower {name}"),
    }
}

/// Compares `front` with the default's result. The front points other than the default at
/// the default's budget are compared when there are any (same number of epochs, a fair
/// comparison); otherwise all other front points, and the note says the budgets differ.
pub fn compare(names: &[String], front: &[&TrialLine], default: &TrialLine) -> Comparison {
    let others: Vec<&TrialLine> = front
        .iter()
        .copied()
        .filter(|t| t.id != default.id)
        .collect();
    let at_budget: Vec<&TrialLine> = others
        .iter()
        .copied()
        .filter(|t| t.budget == default.budget)
        .collect();
    let same_budget = !at_budget.is_empty();
    let compared: Vec<&TrialLine> = if same_budget { at_budget } else { others };
    let mut compared_budgets: Vec<f64> = compared.iter().map(|t| t.budget).collect();
    compared_budgets.sort_by(f64::total_cmp);
    compared_budgets.dedup();
    let list = compared_budgets
        .iter()
        .map(|b| fmt_budget(*b))
        .collect::<Vec<_>>()
        .join(", ");
    let budgets_note = if front.is_empty() {
        "the front is empty (no feasible trial): there is nothing to compare".to_string()
    } else if compared.is_empty() {
        "the default is the only front point: there is nothing to compare".to_string()
    } else if same_budget {
        format!(
            "compared at budget {}: the default's highest budget, which {} of {} front points reached",
            fmt_budget(default.budget),
            compared.len(),
            front.len()
        )
    } else {
        format!(
            "no other front point has the default's budget {}: front points at budget {} compared with the default at {}",
            fmt_budget(default.budget),
            list,
            fmt_budget(default.budget)
        )
    };
    let mut improvements = Vec::new();
    let mut not_improved = Vec::new();
    for (j, name) in names.iter().enumerate() {
        let d = default.objectives[j];
        let best = compared
            .iter()
            .filter(|t| t.objectives[j] < d)
            .min_by(|a, b| a.objectives[j].total_cmp(&b.objectives[j]));
        match best {
            Some(t) if d > 0.0 => improvements.push(Improvement {
                objective: name.clone(),
                phrase: phrase(names, j),
                default_value: d,
                value: t.objectives[j],
                percent: (d - t.objectives[j]) / d * 100.0,
                trial: t.id,
                budget: t.budget,
            }),
            _ => not_improved.push(name.clone()),
        }
    }
    let dominating = compared
        .iter()
        .filter(|t| {
            t.objectives
                .iter()
                .zip(&default.objectives)
                .all(|(v, d)| v < d)
        })
        .map(|t| t.id)
        .collect();
    let headline = if front.is_empty() {
        "no configuration met every constraint: there is no front to compare with the default DSNN"
            .to_string()
    } else if compared.is_empty() {
        "the default DSNN is the whole front: no configuration improves on it".to_string()
    } else if improvements.is_empty() {
        "no front point improves on the default DSNN in any objective".to_string()
    } else {
        let parts: Vec<String> = improvements
            .iter()
            .map(|i| format!("{:.1}% {}", i.percent, i.phrase))
            .collect();
        format!("{} than the default DSNN", parts.join(", "))
    };
    Comparison {
        default_trial: default.id,
        default_budget: default.budget,
        compared_budgets,
        same_budget,
        budgets_note,
        improvements,
        not_improved,
        dominating,
        headline,
    }
}

/// A budget as the log holds it: `9` for whole epochs, `2.5` otherwise.
pub fn fmt_budget(b: f64) -> String {
    format!("{b}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(id: u64, lr: f64, budget: f64, objectives: &[f64]) -> TrialLine {
        let mut config = Config::new();
        config.insert("lr", lr);
        TrialLine::success(id, config, budget, objectives.to_vec())
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_default_is_taken_at_its_highest_successful_budget() {
        let mut default = Config::new();
        default.insert("lr", 0.1);
        let mut failed = trial(3, 0.1, 9.0, &[]);
        failed.status = TrialStatus::Failed;
        let lines = vec![
            trial(0, 0.1, 1.0, &[0.5, 1.0]),
            trial(1, 0.1, 3.0, &[0.4, 1.0]),
            failed,
        ];
        assert_eq!(DefaultResult::find(&lines, &default).trial().unwrap().id, 1);
        let only_failed = vec![lines[2].clone()];
        assert!(matches!(
            DefaultResult::find(&only_failed, &default),
            DefaultResult::Failed(t) if t.id == 3
        ));
        let mut other = Config::new();
        other.insert("lr", 0.2);
        assert!(matches!(
            DefaultResult::find(&lines, &other),
            DefaultResult::NotEvaluated
        ));
    }

    #[test]
    fn improvements_take_the_best_front_point_per_objective_at_the_same_budget() {
        let n = names(&["loss", "inference_kwh"]);
        let default = trial(0, 0.1, 9.0, &[0.20, 4.0e-3]);
        let a = trial(1, 0.2, 9.0, &[0.15, 5.0e-3]);
        let b = trial(2, 0.3, 9.0, &[0.25, 1.0e-3]);
        let c = trial(3, 0.4, 3.0, &[0.01, 1.0e-5]); // another budget: not compared
        let c = compare(&n, &[&a, &b, &c], &default);
        assert!(c.same_budget);
        assert_eq!(c.compared_budgets, [9.0]);
        assert_eq!(c.improvements.len(), 2);
        assert!((c.improvements[0].percent - 25.0).abs() < 1e-9);
        assert_eq!(c.improvements[0].trial, 1);
        assert!((c.improvements[1].percent - 75.0).abs() < 1e-9);
        assert_eq!(c.improvements[1].trial, 2);
        assert!(c.dominating.is_empty());
        assert_eq!(
            c.headline,
            "25.0% lower loss, 75.0% less energy than the default DSNN"
        );
    }

    #[test]
    fn other_budgets_are_compared_only_when_none_matches_and_the_note_says_so() {
        let n = names(&["loss", "inference_kwh"]);
        let default = trial(0, 0.1, 1.0, &[0.5, 1.0]);
        let a = trial(1, 0.2, 9.0, &[0.25, 0.5]);
        let c = compare(&n, &[&a], &default);
        assert!(!c.same_budget);
        assert!(
            c.budgets_note
                .contains("no other front point has the default's budget 1")
        );
        assert_eq!(c.dominating, [1]);
        assert_eq!(
            c.headline,
            "50.0% lower loss, 50.0% less energy than the default DSNN"
        );
    }

    #[test]
    fn no_improvement_is_said_plainly_and_energy_objectives_are_named_when_several() {
        let n = names(&["loss", "inference_kwh", "training_kwh"]);
        assert_eq!(phrase(&n, 1), "less energy (inference_kwh)");
        assert_eq!(
            phrase(&names(&["loss", "energy_kg_co2"]), 1),
            "less emissions"
        );
        let default = trial(0, 0.1, 9.0, &[0.1, 1.0, 1.0]);
        let worse = trial(1, 0.2, 9.0, &[0.2, 1.0, 1.0]);
        let c = compare(&n, &[&default, &worse], &default);
        assert!(c.improvements.is_empty());
        assert_eq!(c.not_improved.len(), 3);
        assert!(c.headline.starts_with("no front point improves"));
        let alone = compare(&n, &[&default], &default);
        assert!(alone.headline.contains("whole front"), "{}", alone.headline);
        // Every trial infeasible: an empty front, said as such.
        let none = compare(&n, &[], &default);
        assert!(
            none.headline
                .contains("no configuration met every constraint")
        );
        assert!(
            none.budgets_note.contains("front is empty"),
            "{}",
            none.budgets_note
        );
    }
}
