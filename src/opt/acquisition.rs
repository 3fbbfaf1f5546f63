//! Expected improvement on log-scaled costs and its maximiser (random sampling plus local search), after
//! SMAC3's `EI(log=True)` and `LocalAndSortedRandomSearch`.
//!
//! Two optional additions handle constraints. A feasibility forest (fit on 1 = feasible, 0 = infeasible)
//! turns the score into EI times the probability of feasibility, the constrained EI of Gardner et al.
//! (2014) that SMAC3- and Optuna-style constrained BO use, floored at [`MIN_POF`] so EI still ranks
//! candidates where the classifier is sure. A known-ahead filter drops infeasible random samples and
//! local-search neighbours before they are scored, so no search walks onto them.

use std::cmp::Ordering;
use std::collections::HashSet;

use rand::Rng;

use crate::space::SearchSpace;

use super::forest::Forest;

/// Standard normal CDF.
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * libm::erfc(-z / std::f64::consts::SQRT_2)
}

/// Expected improvement when the model predicts `ln(cost) ~ N(mean, var)` and the incumbent's log-cost is
/// `eta` (xi = 0): `E[max(e^eta - e^Y, 0)] = e^eta Phi(z) - e^(mean + var/2) Phi(z - s)`, `z = (eta - mean)/s`.
pub fn log_expected_improvement(mean: f64, var: f64, eta: f64) -> f64 {
    let s = var.sqrt();
    let z = (eta - mean) / s;
    let ei = eta.exp() * normal_cdf(z) - (mean + 0.5 * var).exp() * normal_cdf(z - s);
    if ei.is_finite() { ei.max(0.0) } else { 0.0 }
}

/// Floor on the probability of feasibility: `ln(PoF)` stays above `ln(1e-6)`, so candidates the
/// classifier rules out are still ordered by EI instead of all tying at zero.
pub const MIN_POF: f64 = 1e-6;

/// How hard the maximiser searches; the defaults keep a suggestion at 100 observations in a few ms.
#[derive(Debug, Clone, PartialEq)]
pub struct MaximizerSettings {
    /// Uniformly random configurations scored (SMAC3: 10,000; local search does most of the work here).
    pub n_random: usize,
    /// Local searches per start set (SMAC3: 10): up to this many from the evaluated configurations with
    /// the highest EI, as many from those with the lowest predicted cost, and as many from the best random
    /// samples, so at most three times this many in all.
    pub n_local_starts: usize,
    /// Neighbours drawn per numeric parameter in the one-exchange neighbourhood (SMAC3: 4).
    pub neighbours_per_numeric: usize,
    /// Upper bound on improving moves per local search.
    pub max_local_steps: usize,
    /// Consecutive moves allowed between equally good neighbours: forest surfaces are piecewise constant,
    /// so a walk across a plateau often finds the next rise (SMAC3: 10).
    pub plateau_steps: usize,
}

impl Default for MaximizerSettings {
    fn default() -> Self {
        MaximizerSettings {
            n_random: 1000,
            n_local_starts: 10,
            neighbours_per_numeric: 4,
            max_local_steps: 50,
            plateau_steps: 10,
        }
    }
}

/// A candidate with its acquisition value and the model's mean (used to break EI ties, e.g. underflow).
#[derive(Debug, Clone)]
pub struct Scored {
    pub vector: Vec<f64>,
    /// The acquisition value: EI, times the probability of feasibility when a feasibility model is set.
    pub ei: f64,
    pub mean: f64,
    /// Probability of feasibility (1 without a feasibility model).
    pub pof: f64,
}

/// Higher acquisition first; ties (e.g. EI underflow) prefer the more likely feasible, then the lower
/// predicted (log-)cost.
fn better(a: &Scored, b: &Scored) -> Ordering {
    b.ei.partial_cmp(&a.ei)
        .unwrap_or(Ordering::Equal)
        .then(b.pof.partial_cmp(&a.pof).unwrap_or(Ordering::Equal))
        .then(a.mean.partial_cmp(&b.mean).unwrap_or(Ordering::Equal))
}

/// Which vectors the maximiser may consider at all (a known-ahead constraint); `true` = allowed.
pub type VectorFilter<'a> = &'a dyn Fn(&[f64]) -> bool;

/// Scores vectors with a fitted forest against the incumbent `eta`.
pub struct Acquisition<'a> {
    space: &'a SearchSpace,
    forest: &'a Forest,
    eta: f64,
    /// Mean prediction = probability of feasibility (see the module doc).
    feasibility: Option<&'a Forest>,
    allowed: Option<VectorFilter<'a>>,
    /// The budget inputs at which every configuration is scored (see `at_budget_inputs`).
    budgets: Vec<f64>,
    features: Vec<f64>,
}

impl<'a> Acquisition<'a> {
    pub fn new(space: &'a SearchSpace, forest: &'a Forest, eta: f64) -> Self {
        Acquisition {
            space,
            forest,
            eta,
            feasibility: None,
            allowed: None,
            budgets: Vec::new(),
            features: Vec::with_capacity(space.len() + 1),
        }
    }

    /// Multiplies EI by the probability of feasibility this forest predicts (fit on 1/0 labels).
    pub fn with_feasibility(mut self, forest: &'a Forest) -> Self {
        self.feasibility = Some(forest);
        self
    }

    /// Keeps random samples and local-search moves to vectors `allowed` accepts.
    pub fn with_filter(mut self, allowed: VectorFilter<'a>) -> Self {
        self.allowed = Some(allowed);
        self
    }

    /// Scores every configuration at this value of the budget input, for a forest that has the
    /// budget as its last input (`ModelData::AllBudgets`).
    pub fn at_budget_input(self, level: f64) -> Self {
        self.at_budget_inputs(&[level])
    }

    /// Scores every configuration by the mean of the forest's predictions (and of the
    /// feasibility forest's) at these values of the budget input: for a configuration that must
    /// do well at each of these budgets.
    pub fn at_budget_inputs(mut self, levels: &[f64]) -> Self {
        self.budgets = levels.to_vec();
        self
    }

    fn is_allowed(&self, v: &[f64]) -> bool {
        self.allowed.is_none_or(|f| f(v))
    }

    pub fn score(&mut self, vector: Vec<f64>) -> Scored {
        self.space.features_into(&vector, &mut self.features);
        let (forest, feasibility) = (self.forest, self.feasibility);
        let predict = |features: &[f64]| {
            let (mean, var) = forest.predict(features);
            let pof = feasibility.map_or(1.0, |f| f.predict(features).0.clamp(0.0, 1.0));
            (mean, var, pof)
        };
        // Averaged over the budget inputs; the variance's average is the variance of the mean
        // if the predictions were fully correlated, as they are where no tree splits on the
        // budget.
        let (mean, var, pof) = if self.budgets.is_empty() {
            predict(&self.features)
        } else {
            let mut sum = (0.0, 0.0, 0.0);
            for &level in &self.budgets {
                self.features.push(level);
                let (m, v, p) = predict(&self.features);
                self.features.pop();
                sum = (sum.0 + m, sum.1 + v, sum.2 + p);
            }
            let n = self.budgets.len() as f64;
            (sum.0 / n, sum.1 / n, sum.2 / n)
        };
        let ei = log_expected_improvement(mean, var, self.eta);
        Scored {
            // ln EI + ln max(PoF, MIN_POF), kept in the product form (same order, no -inf for EI = 0).
            ei: if self.feasibility.is_some() {
                ei * pof.max(MIN_POF)
            } else {
                ei
            },
            mean,
            pof,
            vector,
        }
    }

    /// Candidates sorted best first: every allowed random sample and every allowed local-search optimum.
    ///
    /// Local searches start from the best of `previous` (evaluated configurations) and of the random
    /// samples (see `local_starts`), so promising regions already found are refined while random samples
    /// keep exploring.
    pub fn maximize<R: Rng + ?Sized>(
        &mut self,
        previous: &[Vec<f64>],
        settings: &MaximizerSettings,
        rng: &mut R,
    ) -> Vec<Scored> {
        let mut random: Vec<Scored> = Vec::with_capacity(settings.n_random);
        for _ in 0..settings.n_random {
            let v = self.space.sample_vector(rng);
            if self.is_allowed(&v) {
                random.push(self.score(v));
            }
        }
        let starts = self.local_starts(previous, &random, settings.n_local_starts);

        let mut out: Vec<Scored> = starts
            .into_iter()
            .map(|s| self.local_search(s, settings, rng))
            .collect();
        out.append(&mut random);
        // A local search that never moved returns its start, which may be an evaluated vector the
        // filter rejects (the default configuration): no candidate breaks the filter.
        out.retain(|s| self.is_allowed(&s.vector));
        out.sort_by(better);
        out
    }

    /// Starting points of the local searches, as SMAC3's `LocalSearch` picks them: the `n` evaluated
    /// configurations with the highest EI, the `n` evaluated ones with the lowest predicted cost, then the
    /// `n` best random samples, without repeats.
    ///
    /// The lowest-predicted-cost starts matter most: EI at an evaluated point is small (the forest is
    /// sure there), yet the best point is where a small step most often improves, e.g. moving one
    /// parameter along a front while the others stay optimal.
    fn local_starts(&mut self, previous: &[Vec<f64>], random: &[Scored], n: usize) -> Vec<Scored> {
        let mut by_ei: Vec<Scored> = previous.iter().map(|v| self.score(v.clone())).collect();
        let mut by_cost = by_ei.clone();
        by_ei.sort_by(better);
        by_cost.sort_by(|a, b| a.mean.total_cmp(&b.mean));
        let mut by_random = random.to_vec();
        by_random.sort_by(better);
        let mut seen = HashSet::new();
        let mut starts = Vec::with_capacity(3 * n);
        for list in [by_ei, by_cost, by_random] {
            starts.extend(
                list.into_iter()
                    .filter(|s| seen.insert(SearchSpace::key(&s.vector)))
                    .take(n),
            );
        }
        starts
    }

    /// Best-improvement hill climbing over the one-exchange neighbourhood, with bounded plateau walks.
    fn local_search<R: Rng + ?Sized>(
        &mut self,
        start: Scored,
        settings: &MaximizerSettings,
        rng: &mut R,
    ) -> Scored {
        let mut best = start;
        let mut current = best.clone();
        let mut flat = 0;
        for _ in 0..settings.max_local_steps {
            let neighbours =
                self.space
                    .neighbours(&current.vector, settings.neighbours_per_numeric, rng);
            let top = if self.allowed.is_some() {
                // The best allowed neighbour, asking the filter (a user predicate on a decoded
                // configuration, dearer than a forest prediction) only down to the first allowed one.
                let mut scored: Vec<Scored> =
                    neighbours.into_iter().map(|n| self.score(n)).collect();
                scored.sort_by(better);
                scored.into_iter().find(|s| self.is_allowed(&s.vector))
            } else {
                neighbours.into_iter().map(|n| self.score(n)).min_by(better)
            };
            let Some(top) = top else {
                break;
            };
            match better(&top, &current) {
                Ordering::Less => {
                    flat = 0;
                    current = top;
                }
                Ordering::Equal if flat < settings.plateau_steps => {
                    flat += 1;
                    current = top;
                }
                _ => break,
            }
            if better(&current, &best) == Ordering::Less {
                best = current.clone();
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::opt::forest::ForestSettings;
    use crate::space::ParamSpec;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn ei_values_hand_checked() {
        // eta = mean = 0, s = 1: 0.5 - e^0.5 * Phi(-1).
        assert!((log_expected_improvement(0.0, 1.0, 0.0) - 0.238_421_708_134_876_56).abs() < 1e-12);
        assert!(
            (log_expected_improvement(-1.0, 0.25, -0.5) - 0.222_056_945_740_153_9).abs() < 1e-12
        );
        assert!(
            (log_expected_improvement(0.5, 0.04, 0.0) - 0.000_378_119_528_280_034).abs() < 1e-12
        );
        // Far worse than the incumbent with no uncertainty: nothing to gain.
        assert_eq!(log_expected_improvement(5.0, 1e-10, 0.0), 0.0);
        assert!((normal_cdf(0.0) - 0.5).abs() < 1e-15);
    }

    /// Two unit parameters, 60 random samples, log cost of a bowl at (0.8, 0.2), and the rng after.
    fn bowl_at_0_8_0_2(seed: u64) -> (SearchSpace, Vec<Vec<f64>>, Vec<f64>, ChaCha8Rng) {
        let space = SearchSpace::new(
            vec![
                ParamSpec::float("a", 0.0, 1.0, 0.5),
                ParamSpec::float("b", 0.0, 1.0, 0.5),
            ],
            None,
        )
        .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let x: Vec<Vec<f64>> = (0..60).map(|_| space.sample_vector(&mut rng)).collect();
        let y: Vec<f64> = x
            .iter()
            .map(|v| ((v[0] - 0.8).powi(2) + (v[1] - 0.2).powi(2) + 1e-3).ln())
            .collect();
        (space, x, y, rng)
    }

    #[test]
    fn several_budget_inputs_score_the_mean_prediction() {
        // A forest whose last input is the budget level: the cost is the level itself plus a
        // little of the parameter, so predictions at levels 0 and 2 differ.
        let (space, x, _, _) = bowl_at_0_8_0_2(4);
        let rows: Vec<Vec<f64>> = x
            .iter()
            .enumerate()
            .map(|(i, v)| vec![v[0], v[1], (i % 3) as f64])
            .collect();
        let y: Vec<f64> = rows.iter().map(|r| r[2] + 0.1 * r[0]).collect();
        let mut kinds = space.feature_kinds();
        kinds.push(crate::space::FeatureKind::Continuous);
        let forest = Forest::fit(&rows, &y, &kinds, &ForestSettings::default(), 1);
        let v = vec![0.3, 0.6];
        let at = |level: f64| forest.predict(&[v[0], v[1], level]);
        let (low, high) = (at(0.0), at(2.0));
        assert!(high.0 - low.0 > 1.0, "{low:?} {high:?}");
        let scored = Acquisition::new(&space, &forest, 0.0)
            .at_budget_inputs(&[0.0, 2.0])
            .score(v.clone());
        assert!((scored.mean - (low.0 + high.0) / 2.0).abs() < 1e-12);
        // One input: that prediction, as before.
        let one = Acquisition::new(&space, &forest, 0.0)
            .at_budget_input(2.0)
            .score(v);
        assert_eq!(one.mean, high.0);
        assert_eq!(one.ei, log_expected_improvement(high.0, high.1, 0.0));
    }

    #[test]
    fn maximiser_finds_the_low_region_of_a_fitted_forest() {
        // Cost falls towards x = (0.8, 0.2); the best random+local candidate should land near it.
        let (space, x, y, mut rng) = bowl_at_0_8_0_2(9);
        let forest = Forest::fit(
            &x,
            &y,
            &space.feature_kinds(),
            &ForestSettings::default(),
            3,
        );
        let eta = x
            .iter()
            .map(|v| forest.predict(v).0)
            .fold(f64::INFINITY, f64::min);
        let mut acq = Acquisition::new(&space, &forest, eta);
        let settings = MaximizerSettings::default();
        let out = acq.maximize(&x, &settings, &mut rng);
        // Every random sample plus one local optimum per start: the 10 evaluated points with the highest
        // EI, 10 more with the lowest predicted cost, and the 10 best random samples.
        assert_eq!(out.len(), settings.n_random + 3 * settings.n_local_starts);
        assert!(
            out.windows(2)
                .all(|w| better(&w[0], &w[1]) != Ordering::Greater)
        );
        let best = &out[0].vector;
        let dist = ((best[0] - 0.8).powi(2) + (best[1] - 0.2).powi(2)).sqrt();
        assert!(dist < 0.25, "{best:?}");
    }

    #[test]
    fn feasibility_and_filter_shape_the_candidates() {
        // Cost falls towards a = 0.8, but a > 0.5 is infeasible (measured): with the feasibility forest
        // the best candidate moves to the feasible side; a known filter b < 0.5 holds for every candidate.
        let (space, x, y, mut rng) = bowl_at_0_8_0_2(4);
        let labels: Vec<f64> = x.iter().map(|v| f64::from(u8::from(v[0] <= 0.5))).collect();
        let kinds = space.feature_kinds();
        let settings = ForestSettings::default();
        let forest = Forest::fit(&x, &y, &kinds, &settings, 3);
        let pof = Forest::fit(&x, &labels, &kinds, &settings, 5);
        let eta = x
            .iter()
            .zip(&labels)
            .filter(|(_, l)| **l == 1.0)
            .map(|(v, _)| forest.predict(v).0)
            .fold(f64::INFINITY, f64::min);
        let m = MaximizerSettings::default();

        let plain = Acquisition::new(&space, &forest, eta).maximize(&x, &m, &mut rng);
        assert!(plain[0].vector[0] > 0.5, "{:?}", plain[0].vector);
        assert!(plain.iter().all(|s| s.pof == 1.0));

        let allowed = |v: &[f64]| v[1] < 0.5;
        let out = Acquisition::new(&space, &forest, eta)
            .with_feasibility(&pof)
            .with_filter(&allowed)
            .maximize(&x, &m, &mut rng);
        assert!(out[0].vector[0] <= 0.5, "{:?}", out[0].vector);
        assert!(out[0].pof > 0.5);
        assert!(out.iter().all(|s| s.vector[1] < 0.5));
        // Rejected random samples are not scored: fewer candidates than without the filter.
        assert!(out.len() < m.n_random + 3 * m.n_local_starts);
        assert!(
            out.windows(2)
                .all(|w| better(&w[0], &w[1]) != Ordering::Greater)
        );
    }
}
