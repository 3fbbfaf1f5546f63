//! Multi-fidelity test problems for `dsnn-hpo bench`: two objectives whose values at a budget of
//! `b` epochs approach the full-budget values as `b` grows, so that Hyperband-style schedules can be
//! judged on what they pay (epochs) for what they find (the full-budget front).
//!
//! Every problem is defined on budgets in `[1, max]` (`max` = the bench's `--max-budget`, 27 by
//! default) through the fidelity gap `w(b) = 1 - ln b / ln max`, clamped to `[0, 1]`: 1 at one
//! epoch, 0 at `max`. At `b = max` every objective is exactly the full-fidelity value
//! ([`MfBench::full`]); below it a *bias* that depends on the configuration (so it can reorder
//! configurations, not just shift them) and a Gaussian *noise* of width `sigma * w(b)` are added.
//! The noise is a pure function of `(seed, trial id, objective)`, so a run is reproducible and a
//! promoted trial gets fresh noise (it is a new measurement).
//!
//! The problems (measured Spearman correlations: README.md, section "Multi-fidelity benchmark"):
//!
//! - `mf-zdt1` (low budgets rank well): ZDT1 on `x1..x6` in `[0, 1]` whose distance function
//!   `g = 1 + 9/5 sum x_i` is, at budget `b`, `g_b = 1 + 9/5 sum [x_i + c_i w(b) (1 - 2 x_i)]`
//!   with `c = (0.1, 0.25, 0.4, 0.15, 0.3)`: the variables keep the sign of their effect at every
//!   budget, only their weights change; noise 0.02.
//! - `mf-zdt3` (medium): ZDT3 with the same form of bias and `c = (0.6, 0.2, 0.75, 0.1, 0.45)`:
//!   below `c_i w(b) = 1/2` nothing changes sign, above it (two variables at one epoch) a low
//!   budget points the wrong way on that variable; noise 0.05.
//! - `mf-dtlz2` (misleading): DTLZ2 whose distance `g = sum (x_i - 1/2)^2` is, at budget `b`,
//!   `sum (x_i - m_i(b))^2` with the optimum moved to `m_i(b) = 1/2 + sqrt(w(b)) (t_i - 1/2)`,
//!   `t = (0.05, 0.95, 0.1, 0.9, 0.05)`: cheap budgets send the search to the corners, and the
//!   square root keeps them misleading up to a third of the budget range; noise 0.05.
//! - Validation only (`mf-validation`, held out from tuning the schedules): `mf-zdt2`, ZDT2
//!   (non-convex front) with the ZDT form of bias, `c = (0.55, 0.15, 0.35, 0.5, 0.25)` (one
//!   variable points the wrong way at one epoch), noise 0.03; `mf-dtlz2-mild`, DTLZ2 with the
//!   optimum moved towards `t = (0.8, 0.25, 0.7, 0.3, 0.85)` by `w(b)` itself (misleading at one
//!   epoch, much less from three on), noise 0.08.
//! - `mf-dsnn` (mixed categorical / integer, DSNN-like): `shift_type` {q, ps}, `weight_bits`
//!   2..8, `shift_depth` 0..20 (layers of a 20-layer network converted to shift layers), `lr`
//!   1e-4..0.3 (log), `optimizer` {sgd, adam, rmsprop}. Objective 1 is a validation error on a
//!   learning curve `e(b) = e_inf + (0.9 - e_inf) exp(-b / tau)` whose full-fidelity value is
//!   `e(max)`; adaptive optimizers and large learning rates learn fast (small `tau`) but end
//!   worse (larger `e_inf`), coarse weights and deep conversion end worse and learn slower, so
//!   the first epochs favour the wrong configurations. Noise 0.03 on the error. Objective 2 is a
//!   relative inference energy (1 = all 20 layers in float), computed from the design alone:
//!   the same at every budget, as an op-count energy model is.
//!
//! Hypervolumes are computed on normalised objectives (`(f - low) / (high - low)` with fixed,
//! per-problem ranges from [`MfProblem::ranges`]) against the reference point (1.1, 1.1), so runs
//! and quarters of a run are compared on one scale.

use std::f64::consts::{FRAC_PI_2, PI};

use serde::Serialize;

use crate::space::{Config, ParamSpec, SearchSpace};

use super::problems::{N_VARS, Problem};

/// Reference point of the normalised hypervolume.
pub const REFERENCE: [f64; 2] = [1.1, 1.1];

/// Chance-level error of the DSNN-like problem (10 classes): where every learning curve starts.
const DSNN_START_ERROR: f64 = 0.9;

/// Layers of the DSNN-like problem's network.
const DSNN_LAYERS: f64 = 20.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MfProblem {
    Zdt1,
    Zdt3,
    Dtlz2,
    Dsnn,
    Zdt2,
    Dtlz2Mild,
}

impl MfProblem {
    pub const ALL: [MfProblem; 4] = [
        MfProblem::Zdt1,
        MfProblem::Zdt3,
        MfProblem::Dtlz2,
        MfProblem::Dsnn,
    ];

    /// Held-out problems to validate schedule changes on (`bench --problem mf-validation`):
    /// bias and noise strengths, and a front shape, that the four above were not tuned on.
    pub const VALIDATION: [MfProblem; 2] = [MfProblem::Zdt2, MfProblem::Dtlz2Mild];

    pub fn name(self) -> &'static str {
        match self {
            MfProblem::Zdt1 => "mf-zdt1",
            MfProblem::Zdt3 => "mf-zdt3",
            MfProblem::Dtlz2 => "mf-dtlz2",
            MfProblem::Dsnn => "mf-dsnn",
            MfProblem::Zdt2 => "mf-zdt2",
            MfProblem::Dtlz2Mild => "mf-dtlz2-mild",
        }
    }

    /// `x1 .. x6` for the ZDT/DTLZ variants, the mixed space of module doc for `mf-dsnn`.
    pub fn space(self) -> SearchSpace {
        match self {
            MfProblem::Zdt1 => Problem::Zdt1.space(),
            MfProblem::Zdt2 => Problem::Zdt2.space(),
            MfProblem::Zdt3 => Problem::Zdt3.space(),
            MfProblem::Dtlz2 | MfProblem::Dtlz2Mild => Problem::Dtlz2.space(),
            MfProblem::Dsnn => {
                let specs = vec![
                    ParamSpec::categorical("shift_type", &["q", "ps"], "ps"),
                    ParamSpec::int("weight_bits", 2, 8, 5),
                    ParamSpec::int("shift_depth", 0, 20, 20),
                    ParamSpec::float("lr", 1e-4, 0.3, 0.1).log(),
                    ParamSpec::categorical("optimizer", &["sgd", "adam", "rmsprop"], "sgd"),
                ];
                SearchSpace::new(specs, None)
                    .unwrap_or_else(|e| panic!("built-in problem space: {e}"))
            }
        }
    }

    /// Fixed `(low, high)` of each objective for the normalised hypervolume: the ZDT/DTLZ fronts'
    /// extent (ZDT3's second objective reaches -0.7734), the DSNN-like error up to 0.5 (worse is
    /// beyond the reference point) and energy up to 1.1.
    pub fn ranges(self) -> [(f64, f64); 2] {
        match self {
            MfProblem::Zdt1 | MfProblem::Zdt2 | MfProblem::Dtlz2 | MfProblem::Dtlz2Mild => {
                [(0.0, 1.0), (0.0, 1.0)]
            }
            MfProblem::Zdt3 => [(0.0, 1.0), (-0.7734, 1.0)],
            MfProblem::Dsnn => [(0.0, 0.5), (0.0, 1.1)],
        }
    }

    /// Width of the noise at one epoch, per objective.
    fn sigma(self) -> [f64; 2] {
        match self {
            MfProblem::Zdt1 => [0.02, 0.02],
            MfProblem::Zdt3 | MfProblem::Dtlz2 => [0.05, 0.05],
            MfProblem::Zdt2 => [0.03, 0.03],
            MfProblem::Dtlz2Mild => [0.08, 0.08],
            MfProblem::Dsnn => [0.03, 0.0],
        }
    }

    /// `objectives` scaled by [`MfProblem::ranges`].
    pub fn normalise(self, objectives: &[f64]) -> Vec<f64> {
        objectives
            .iter()
            .zip(self.ranges())
            .map(|(f, (lo, hi))| (f - lo) / (hi - lo))
            .collect()
    }
}

/// The fidelity gap `w(b) = 1 - ln b / ln max` in `[0, 1]` (see the module doc).
pub fn gap(budget: f64, max_budget: f64) -> f64 {
    if max_budget <= 1.0 || budget >= max_budget {
        return 0.0;
    }
    (1.0 - budget.max(1.0).ln() / max_budget.ln()).clamp(0.0, 1.0)
}

/// A problem at a given maximum budget, with the seed of its noise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MfBench {
    pub problem: MfProblem,
    pub max_budget: f64,
    pub seed: u64,
}

impl MfBench {
    /// The objectives of `config` trained for `budget` epochs, as trial `trial` measures them.
    pub fn evaluate(&self, config: &Config, budget: f64, trial: u64) -> [f64; 2] {
        let w = gap(budget, self.max_budget);
        let mut f = self.biased(config, budget, w);
        if w > 0.0 {
            for (j, (v, s)) in f.iter_mut().zip(self.problem.sigma()).enumerate() {
                *v += w * s * standard_normal(self.seed, trial, j as u64);
            }
        }
        f
    }

    /// The full-fidelity objectives (budget `max`, no noise).
    pub fn full(&self, config: &Config) -> [f64; 2] {
        self.biased(config, self.max_budget, 0.0)
    }

    /// The noise-free objectives at `budget` (gap `w`).
    fn biased(&self, config: &Config, budget: f64, w: f64) -> [f64; 2] {
        match self.problem {
            MfProblem::Zdt1 => zdt(Problem::Zdt1, &xs(config), &[0.1, 0.25, 0.4, 0.15, 0.3], w),
            MfProblem::Zdt3 => zdt(Problem::Zdt3, &xs(config), &[0.6, 0.2, 0.75, 0.1, 0.45], w),
            MfProblem::Zdt2 => zdt(
                Problem::Zdt2,
                &xs(config),
                &[0.55, 0.15, 0.35, 0.5, 0.25],
                w,
            ),
            MfProblem::Dtlz2 => dtlz2(&xs(config), &[0.05, 0.95, 0.1, 0.9, 0.05], w.sqrt()),
            MfProblem::Dtlz2Mild => dtlz2(&xs(config), &[0.8, 0.25, 0.7, 0.3, 0.85], w),
            MfProblem::Dsnn => dsnn(config, budget),
        }
    }
}

/// `x1 .. x6` of a configuration (NaN where one is missing, which no optimizer config does).
fn xs(config: &Config) -> Vec<f64> {
    (1..=N_VARS)
        .map(|i| config.f64(&format!("x{i}")).unwrap_or(f64::NAN))
        .collect()
}

/// ZDT1/ZDT2/ZDT3 with the biased distance `g_b` of the module doc; `w = 0` is the problem itself.
fn zdt(problem: Problem, x: &[f64], c: &[f64], w: f64) -> [f64; 2] {
    if w == 0.0 {
        return problem.evaluate(x);
    }
    let n = x.len();
    let f1 = x[0];
    let g = 1.0
        + 9.0 / (n - 1) as f64
            * x[1..]
                .iter()
                .zip(c)
                .map(|(xi, ci)| xi + ci * w * (1.0 - 2.0 * xi))
                .sum::<f64>();
    let r = f1 / g;
    let h = match problem {
        Problem::Zdt3 => 1.0 - r.sqrt() - r * (10.0 * PI * f1).sin(),
        Problem::Zdt2 => 1.0 - r * r,
        _ => 1.0 - r.sqrt(),
    };
    [f1, g * h]
}

/// DTLZ2 (two objectives) with the distance's optimum moved towards `t` by `s` (0: the problem).
fn dtlz2(x: &[f64], t: &[f64], s: f64) -> [f64; 2] {
    if s == 0.0 {
        return Problem::Dtlz2.evaluate(x);
    }
    let g: f64 = x[1..]
        .iter()
        .zip(t)
        .map(|(xi, ti)| (xi - (0.5 + s * (ti - 0.5))).powi(2))
        .sum();
    let a = x[0] * FRAC_PI_2;
    [(1.0 + g) * a.cos(), (1.0 + g) * a.sin()]
}

/// The DSNN-like problem: error on a learning curve at `budget` epochs, and relative energy.
fn dsnn(config: &Config, budget: f64) -> [f64; 2] {
    let ps = config.str("shift_type") == Some("ps");
    let bits = config.f64("weight_bits").unwrap_or(5.0);
    let depth = config.f64("shift_depth").unwrap_or(DSNN_LAYERS) / DSNN_LAYERS;
    let lr = config.f64("lr").unwrap_or(0.1);
    // Final error floor, best learning rate and learning time constant (epochs) per optimizer.
    let (floor, best_lr, tau) = match config.str("optimizer") {
        Some("adam") => (0.10, 0.002, 1.5),
        Some("rmsprop") => (0.12, 0.001, 2.5),
        _ => (0.07, 0.05, 6.0),
    };
    // Coarse shift weights cost accuracy (PS degrades more gently) in proportion to depth.
    let quant = if ps {
        0.03 + 0.3 * (-0.8 * (bits - 2.0)).exp()
    } else {
        0.01 + 0.6 * (-(bits - 2.0)).exp()
    };
    let off = (lr / best_lr).log10();
    let e_inf = (floor + 0.04 * off * off + depth * quant).min(DSNN_START_ERROR);
    // Larger steps learn faster; coarse, deep quantization slows learning down.
    let tau =
        (tau * (best_lr / lr).powf(0.3) * (1.0 + depth * 2f64.powf(2.0 - bits))).clamp(0.5, 30.0);
    let error = e_inf + (DSNN_START_ERROR - e_inf) * (-budget / tau).exp();
    // Relative energy of one inference: float layers cost 1, shift layers less, with the bits.
    let shift_cost = if ps {
        0.05 + 0.02 * bits
    } else {
        0.1 + 0.04 * bits
    };
    let energy = 0.05 + (1.0 - depth) + depth * shift_cost;
    [error, energy]
}

/// SplitMix64: the noise's hash of `(seed, trial, objective)`.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A standard normal draw that depends on nothing but its arguments (Box-Muller).
pub fn standard_normal(seed: u64, trial: u64, objective: u64) -> f64 {
    let h = splitmix(splitmix(splitmix(seed) ^ trial) ^ objective);
    let unit = |z: u64| ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let (u1, u2) = (unit(h), unit(splitmix(h)));
    (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn configs(problem: MfProblem, n: usize) -> Vec<Config> {
        let space = problem.space();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        (0..n).map(|_| space.sample(&mut rng)).collect()
    }

    #[test]
    fn max_budget_is_the_full_fidelity_problem() {
        for problem in MfProblem::ALL.into_iter().chain(MfProblem::VALIDATION) {
            let bench = MfBench {
                problem,
                max_budget: 27.0,
                seed: 3,
            };
            for (i, c) in configs(problem, 50).iter().enumerate() {
                assert_eq!(bench.evaluate(c, 27.0, i as u64), bench.full(c));
            }
        }
        // ... and for the ZDT/DTLZ variants the standard problem itself.
        let bench = MfBench {
            problem: MfProblem::Zdt3,
            max_budget: 27.0,
            seed: 0,
        };
        let c = configs(MfProblem::Zdt3, 1).remove(0);
        assert_eq!(bench.full(&c), Problem::Zdt3.evaluate(&xs(&c)));
    }

    #[test]
    fn bias_shrinks_with_the_budget() {
        for problem in MfProblem::ALL.into_iter().chain(MfProblem::VALIDATION) {
            let bench = MfBench {
                problem,
                max_budget: 27.0,
                seed: 0,
            };
            let cs = configs(problem, 200);
            // Mean absolute bias (noise-free) over the configurations, per budget.
            let bias = |b: f64| -> f64 {
                cs.iter()
                    .map(|c| {
                        let w = gap(b, 27.0);
                        let (low, full) = (bench.biased(c, b, w), bench.full(c));
                        (low[0] - full[0]).abs() + (low[1] - full[1]).abs()
                    })
                    .sum::<f64>()
                    / cs.len() as f64
            };
            let seq: Vec<f64> = [1.0, 3.0, 9.0, 27.0].map(bias).to_vec();
            assert!(seq[0] > 0.0, "{}: no bias at 1 epoch", problem.name());
            assert!(
                seq.windows(2).all(|p| p[0] > p[1]),
                "{}: {seq:?}",
                problem.name()
            );
            assert_eq!(seq[3], 0.0);
        }
        assert_eq!(gap(1.0, 27.0), 1.0);
        assert!((gap(3.0, 27.0) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(gap(27.0, 27.0), 0.0);
    }

    #[test]
    fn noise_is_deterministic_under_a_seed() {
        let c = configs(MfProblem::Zdt1, 1).remove(0);
        let bench = |seed| MfBench {
            problem: MfProblem::Zdt1,
            max_budget: 27.0,
            seed,
        };
        assert_eq!(bench(5).evaluate(&c, 1.0, 9), bench(5).evaluate(&c, 1.0, 9));
        assert_ne!(bench(5).evaluate(&c, 1.0, 9), bench(6).evaluate(&c, 1.0, 9));
        assert_ne!(
            bench(5).evaluate(&c, 1.0, 9),
            bench(5).evaluate(&c, 1.0, 10)
        );
        // Standard normal: mean near 0, variance near 1 over many draws.
        let z: Vec<f64> = (0..20_000).map(|t| standard_normal(1, t, 0)).collect();
        let mean = z.iter().sum::<f64>() / z.len() as f64;
        let var = z.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / z.len() as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }

    #[test]
    fn dsnn_fast_learners_can_end_worse() {
        let space = MfProblem::Dsnn.space();
        let config = |opt: &str, lr: f64| {
            let mut c = space.default_config();
            c.insert("optimizer", opt);
            c.insert("lr", lr);
            c.insert("shift_depth", 0i64);
            c
        };
        let (sgd, adam) = (config("sgd", 0.05), config("adam", 0.01));
        let at = |c: &Config, b: f64| dsnn(c, b)[0];
        assert!(at(&adam, 1.0) < at(&sgd, 1.0));
        assert!(at(&adam, 27.0) > at(&sgd, 27.0));
    }
}
