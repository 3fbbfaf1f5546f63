//! The Pareto front of a run: successful trials, each configuration counted once at the highest
//! budget it reached, that no other such trial dominates; and its normalised hypervolume.

use crate::opt::hypervolume::hypervolume;
use crate::opt::pareto::non_dominated;
use crate::space::{Config, Value};
use crate::store::{TrialLine, TrialStatus};

/// Two configurations are the same when they set the same parameters to the same values;
/// the order of entries does not matter and integers equal floats of the same value (a log
/// written by another version may spell `5` as `5.0`).
pub fn same_config(a: &Config, b: &Config) -> bool {
    a.len() == b.len()
        && a.iter().all(|(name, va)| {
            b.get(name).is_some_and(|vb| match (va, vb) {
                (Value::Str(x), Value::Str(y)) => x == y,
                (x, y) => x.as_f64().is_some() && x.as_f64() == y.as_f64(),
            })
        })
}

/// Successful trials, one per configuration: the one at the highest budget it reached (a
/// configuration evaluated at 1, 3 and 9 epochs counts once, at 9; at equal budgets the first
/// logged wins). In log order of each configuration's first success.
pub fn at_highest_budget(lines: &[TrialLine]) -> Vec<&TrialLine> {
    let mut best: Vec<&TrialLine> = Vec::new();
    for t in lines.iter().filter(|t| t.status == TrialStatus::Success) {
        match best.iter_mut().find(|b| same_config(&b.config, &t.config)) {
            Some(b) if b.budget < t.budget => *b = t,
            Some(_) => {}
            None => best.push(t),
        }
    }
    best
}

/// Successful trials that are non-dominated, each configuration at the highest budget it
/// reached (see [`at_highest_budget`]).
pub fn front_of(lines: &[TrialLine]) -> Vec<&TrialLine> {
    let best = at_highest_budget(lines);
    let points: Vec<Vec<f64>> = best.iter().map(|t| t.objectives.clone()).collect();
    non_dominated(&points)
        .into_iter()
        .map(|i| best[i])
        .collect()
}

/// Hypervolume of `front`, objectives min-max normalised over every successful trial,
/// reference point 1.1 per objective.
pub fn normalised_hypervolume(lines: &[TrialLine], front: &[&TrialLine]) -> f64 {
    let ok: Vec<&TrialLine> = lines
        .iter()
        .filter(|t| t.status == TrialStatus::Success)
        .collect();
    let Some(first) = ok.first() else {
        return 0.0;
    };
    let d = first.objectives.len();
    let (mut lo, mut hi) = (vec![f64::INFINITY; d], vec![f64::NEG_INFINITY; d]);
    for t in &ok {
        for (j, v) in t.objectives.iter().enumerate().take(d) {
            lo[j] = lo[j].min(*v);
            hi[j] = hi[j].max(*v);
        }
    }
    let scaled: Vec<Vec<f64>> = front
        .iter()
        .map(|t| {
            (0..d)
                .map(|j| {
                    let span = hi[j] - lo[j];
                    match t.objectives.get(j) {
                        Some(v) if span > 0.0 => (v - lo[j]) / span,
                        _ => 0.0,
                    }
                })
                .collect()
        })
        .collect();
    hypervolume(&scaled, &vec![1.1; d])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(id: u64, lr: f64, budget: f64, objectives: &[f64]) -> TrialLine {
        let mut config = Config::new();
        config.insert("lr", lr);
        config.insert("optimizer", "sgd");
        TrialLine::success(id, config, budget, objectives.to_vec())
    }

    fn ids(ts: &[&TrialLine]) -> Vec<u64> {
        ts.iter().map(|t| t.id).collect()
    }

    #[test]
    fn a_configuration_counts_once_at_its_highest_budget() {
        let lines = vec![
            // lr 0.1 at 1 epoch looks great, but at 9 epochs it is dominated by lr 0.2.
            trial(0, 0.1, 1.0, &[0.10, 1.0]),
            trial(1, 0.2, 1.0, &[0.50, 2.0]),
            trial(2, 0.3, 1.0, &[0.60, 0.5]),
            trial(3, 0.1, 3.0, &[0.40, 3.0]),
            trial(4, 0.2, 3.0, &[0.30, 2.0]),
            trial(5, 0.1, 9.0, &[0.35, 3.0]),
        ];
        assert_eq!(ids(&at_highest_budget(&lines)), [5, 4, 2]);
        assert_eq!(ids(&front_of(&lines)), [4, 2]);
    }

    #[test]
    fn failed_trials_never_enter_the_front_even_at_a_higher_budget() {
        let mut failed = trial(3, 0.1, 9.0, &[]);
        failed.status = TrialStatus::Failed;
        failed.reason = Some("diverged".into());
        let lines = vec![
            trial(0, 0.1, 1.0, &[0.2, 1.0]),
            trial(1, 0.2, 1.0, &[0.3, 2.0]),
            failed,
        ];
        // The failure at 9 epochs does not hide the configuration's success at 1.
        assert_eq!(ids(&front_of(&lines)), [0]);
    }

    #[test]
    fn equal_budgets_keep_the_first_and_three_objectives_work() {
        let lines = vec![
            trial(0, 0.1, 9.0, &[0.2, 1.0, 5.0]),
            trial(1, 0.1, 9.0, &[0.1, 0.5, 1.0]),
            trial(2, 0.2, 9.0, &[0.3, 0.4, 6.0]),
            trial(3, 0.3, 9.0, &[0.4, 2.0, 7.0]),
        ];
        assert_eq!(ids(&front_of(&lines)), [0, 2]);
    }

    #[test]
    fn configurations_compare_by_value_not_entry_order_or_number_type() {
        let a: Config = [("lr", Value::Float(0.1)), ("bits", Value::Int(5))]
            .into_iter()
            .collect();
        let b: Config = [("bits", Value::Float(5.0)), ("lr", Value::Float(0.1))]
            .into_iter()
            .collect();
        let c: Config = [("bits", Value::Str("5".into())), ("lr", Value::Float(0.1))]
            .into_iter()
            .collect();
        assert!(same_config(&a, &b));
        assert!(!same_config(&a, &c));
        assert!(!same_config(&a, &Config::new()));
    }

    #[test]
    fn hypervolume_is_normalised_over_successful_trials() {
        let lines = vec![
            trial(0, 0.1, 9.0, &[0.0, 1.0]),
            trial(1, 0.2, 9.0, &[1.0, 0.0]),
        ];
        let front = front_of(&lines);
        // Scaled points (0, 1) and (1, 0) against (1.1, 1.1): 1.1*0.1 + 0.1*1.0 + 0.1*0.1 = 0.21.
        let hv = normalised_hypervolume(&lines, &front);
        assert!((hv - 0.21).abs() < 1e-12, "{hv}");
        assert_eq!(normalised_hypervolume(&[], &[]), 0.0);
    }
}
