//! Where a search's cost went: epochs trained per budget, and the front's hypervolume after each
//! quarter of the epochs spent (anytime performance), so a user sees whether the cheap budgets paid.

use std::collections::HashMap;

use serde::Serialize;

use super::front::{front_of, normalised_hypervolume};
use crate::store::TrialLine;

/// The trials run at one budget and the epochs they trained.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BudgetCost {
    pub budget: f64,
    pub trials: usize,
    /// A trial that continued a saved state counts only the epochs it added.
    pub epochs: f64,
    /// Of all epochs trained.
    pub share: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CostReport {
    /// Epochs trained in all, failed trials and the baseline included (a failed trial counts
    /// its whole budget: how far it got is not recorded).
    pub epochs: f64,
    /// Smallest budget first.
    pub by_budget: Vec<BudgetCost>,
    /// Hypervolume of the front of the trials finished within 25, 50, 75 and 100% of the epochs
    /// (in the order they finished), normalised as the whole run's front is, so the four values
    /// compare with each other and with the final one.
    pub hypervolume_at_quarters: [f64; 4],
}

impl CostReport {
    pub fn of(lines: &[TrialLine]) -> CostReport {
        let budget_of: HashMap<u64, f64> = lines.iter().map(|l| (l.id, l.budget)).collect();
        let trained: Vec<f64> = lines
            .iter()
            .map(|l| {
                let from = l
                    .continued_from
                    .and_then(|p| budget_of.get(&p).copied())
                    .unwrap_or(0.0);
                (l.budget - from).max(0.0)
            })
            .collect();
        let epochs: f64 = trained.iter().sum();
        let mut by_budget: Vec<BudgetCost> = Vec::new();
        for (l, e) in lines.iter().zip(&trained) {
            match by_budget.iter_mut().find(|b| b.budget == l.budget) {
                Some(b) => {
                    b.trials += 1;
                    b.epochs += e;
                }
                None => by_budget.push(BudgetCost {
                    budget: l.budget,
                    trials: 1,
                    epochs: *e,
                    share: 0.0,
                }),
            }
        }
        by_budget.sort_by(|a, b| a.budget.total_cmp(&b.budget));
        for b in &mut by_budget {
            b.share = if epochs > 0.0 { b.epochs / epochs } else { 0.0 };
        }
        let mut hypervolume_at_quarters = [0.0; 4];
        for (q, hv) in hypervolume_at_quarters.iter_mut().enumerate() {
            let limit = epochs * (q + 1) as f64 / 4.0;
            let (mut spent, mut n) = (0.0, 0);
            while n < lines.len() && spent + trained[n] <= limit + 1e-9 {
                spent += trained[n];
                n += 1;
            }
            *hv = normalised_hypervolume(lines, &front_of(&lines[..n]));
        }
        CostReport {
            epochs,
            by_budget,
            hypervolume_at_quarters,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::Config;

    fn trial(id: u64, lr: f64, budget: f64, from: Option<u64>, objectives: &[f64]) -> TrialLine {
        let mut config = Config::new();
        config.insert("lr", lr);
        let mut t = TrialLine::success(id, config, budget, objectives.to_vec());
        t.continued_from = from;
        t
    }

    #[test]
    fn promotions_cost_their_extra_epochs_and_quarters_follow_the_log() {
        let lines = vec![
            trial(0, 0.1, 1.0, None, &[1.0, 0.0]),
            trial(1, 0.2, 1.0, None, &[0.5, 0.5]),
            trial(2, 0.3, 1.0, None, &[0.9, 0.9]),
            // Continues trial 0 from 1 to 3 epochs: 2 epochs.
            trial(3, 0.1, 3.0, Some(0), &[0.8, 0.1]),
            // A fresh configuration at 3 epochs: 3 epochs; it dominates the rest.
            trial(4, 0.4, 3.0, None, &[0.0, 0.0]),
        ];
        let c = CostReport::of(&lines);
        assert_eq!(c.epochs, 8.0);
        let rows: Vec<(f64, usize, f64)> = c
            .by_budget
            .iter()
            .map(|b| (b.budget, b.trials, b.epochs))
            .collect();
        assert_eq!(rows, [(1.0, 3, 3.0), (3.0, 2, 5.0)]);
        assert!((c.by_budget[0].share - 3.0 / 8.0).abs() < 1e-12);
        // 2 epochs (a quarter) hold trials 0 and 1; 4 epochs add trial 2; 6 trial 3; 8 trial 4.
        let final_hv = normalised_hypervolume(&lines, &front_of(&lines));
        assert_eq!(c.hypervolume_at_quarters[3], final_hv);
        assert_eq!(
            c.hypervolume_at_quarters[0],
            normalised_hypervolume(&lines, &front_of(&lines[..2]))
        );
        assert!(c.hypervolume_at_quarters[0] > 0.0);
        assert!(
            c.hypervolume_at_quarters.windows(2).all(|w| w[0] <= w[1]),
            "{:?}",
            c.hypervolume_at_quarters
        );
        assert!(c.hypervolume_at_quarters[2] < c.hypervolume_at_quarters[3]);
        let empty = CostReport::of(&[]);
        assert_eq!(
            (empty.epochs, empty.hypervolume_at_quarters),
            (0.0, [0.0; 4])
        );
    }
}
