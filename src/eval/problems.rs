//! Standard two-objective test problems (Zitzler, Deb & Thiele 2000; Deb et al. 2002) on 6 variables in
//! [0, 1], the optimizer benchmark's workload. Defaults are the centre of the cube, so the default
//! configuration gives no head start.

use std::f64::consts::{FRAC_PI_2, PI};

use serde::{Deserialize, Serialize};

use crate::opt::{Outcome, Trial};
use crate::space::{ParamSpec, SearchSpace};

use super::{EvalError, Evaluator};

/// Number of decision variables.
pub const N_VARS: usize = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Problem {
    /// Convex front f2 = 1 - sqrt(f1).
    Zdt1,
    /// Concave front f2 = 1 - f1^2.
    Zdt2,
    /// Disconnected front.
    Zdt3,
    /// Quarter circle f1^2 + f2^2 = 1 (two objectives).
    Dtlz2,
}

impl Problem {
    pub const ALL: [Problem; 4] = [Problem::Zdt1, Problem::Zdt2, Problem::Zdt3, Problem::Dtlz2];

    pub fn name(self) -> &'static str {
        match self {
            Problem::Zdt1 => "zdt1",
            Problem::Zdt2 => "zdt2",
            Problem::Zdt3 => "zdt3",
            Problem::Dtlz2 => "dtlz2",
        }
    }

    /// `x1 .. x6`, floats in [0, 1], default 0.5.
    pub fn space(self) -> SearchSpace {
        let specs = (1..=N_VARS)
            .map(|i| ParamSpec::float(&format!("x{i}"), 0.0, 1.0, 0.5))
            .collect();
        // The specs above are valid by construction; an error here would be a bug in this function.
        SearchSpace::new(specs, None).unwrap_or_else(|e| panic!("built-in problem space: {e}"))
    }

    /// The two objectives at `x` (length [`N_VARS`]).
    pub fn evaluate(self, x: &[f64]) -> [f64; 2] {
        let n = x.len();
        match self {
            Problem::Zdt1 | Problem::Zdt2 | Problem::Zdt3 => {
                let f1 = x[0];
                let g = 1.0 + 9.0 / (n - 1) as f64 * x[1..].iter().sum::<f64>();
                let r = f1 / g;
                let h = match self {
                    Problem::Zdt1 => 1.0 - r.sqrt(),
                    Problem::Zdt2 => 1.0 - r * r,
                    _ => 1.0 - r.sqrt() - r * (10.0 * PI * f1).sin(),
                };
                [f1, g * h]
            }
            Problem::Dtlz2 => {
                let g: f64 = x[1..].iter().map(|v| (v - 0.5).powi(2)).sum();
                let a = x[0] * FRAC_PI_2;
                [(1.0 + g) * a.cos(), (1.0 + g) * a.sin()]
            }
        }
    }
}

/// A [`Problem`] as an [`Evaluator`]; budgets are ignored.
#[derive(Debug, Clone)]
pub struct ProblemEvaluator {
    pub problem: Problem,
}

impl Evaluator for ProblemEvaluator {
    fn objective_names(&self) -> Vec<String> {
        vec!["f1".to_string(), "f2".to_string()]
    }

    fn objective_sources(&self) -> Vec<String> {
        self.objective_names()
            .iter()
            .map(|n| format!("{n} of the test problem {} (computed)", self.problem.name()))
            .collect()
    }

    fn evaluate(&mut self, trial: &Trial) -> Result<Outcome, EvalError> {
        let x = (1..=N_VARS)
            .map(|i| {
                let name = format!("x{i}");
                trial.config.f64(&name).ok_or_else(|| {
                    EvalError::Config(format!("{}: \"{name}\" is missing", self.problem.name()))
                })
            })
            .collect::<Result<Vec<f64>, EvalError>>()?;
        Ok(Outcome::Success {
            objectives: self.problem.evaluate(&x).to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: [f64; 2], b: [f64; 2]) -> bool {
        (a[0] - b[0]).abs() < 1e-12 && (a[1] - b[1]).abs() < 1e-12
    }

    #[test]
    fn values_on_and_off_the_front() {
        let on = [0.25, 0.0, 0.0, 0.0, 0.0, 0.0];
        assert!(close(Problem::Zdt1.evaluate(&on), [0.25, 0.5]));
        assert!(close(Problem::Zdt2.evaluate(&on), [0.25, 0.9375]));
        // sin(2.5 pi) = 1: 1 - 0.5 - 0.25.
        assert!(close(Problem::Zdt3.evaluate(&on), [0.25, 0.25]));
        // Centre: g = 1 + 9/5 * 2.5 = 5.5.
        let centre = [0.5; 6];
        assert!(close(
            Problem::Zdt1.evaluate(&centre),
            [0.5, 5.5 * (1.0 - (0.5f64 / 5.5).sqrt())]
        ));
        let h = std::f64::consts::FRAC_1_SQRT_2;
        assert!(close(Problem::Dtlz2.evaluate(&centre), [h, h]));
        // DTLZ2 off the front: g = 5 * 0.25 = 1.25, x1 = 0 -> (2.25, 0).
        let off = [0.0, 0.0, 1.0, 0.0, 1.0, 0.0];
        assert!(close(Problem::Dtlz2.evaluate(&off), [2.25, 0.0]));
    }

    #[test]
    fn evaluator_reads_the_config() {
        let mut e = ProblemEvaluator {
            problem: Problem::Zdt2,
        };
        let space = Problem::Zdt2.space();
        let trial = Trial {
            id: 0,
            config: space.default_config(),
            budget: 1.0,
            continues: None,
        };
        let Outcome::Success { objectives } = e.evaluate(&trial).unwrap() else {
            panic!("expected success");
        };
        // g = 5.5: f2 = 5.5 * (1 - (0.5/5.5)^2).
        assert!((objectives[1] - 5.5 * (1.0 - (0.5f64 / 5.5).powi(2))).abs() < 1e-12);
        let empty = Trial {
            config: crate::space::Config::new(),
            ..trial
        };
        assert!(e.evaluate(&empty).is_err());
    }
}
