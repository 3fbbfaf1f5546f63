//! Random-forest surrogate set up as SMAC3 does: 10 regression trees on bootstrap samples, every feature
//! considered at each split, grown until leaves are pure (min split 2, min leaf 1, depth 2^20).
//!
//! The prediction is the mean over trees and the uncertainty the variance across trees (floored at 1e-10),
//! which is what SMAC3 feeds into expected improvement. Numeric thresholds fall at a random point between
//! the two values they separate (see [`ForestSettings::random_thresholds`]).
//!
//! Each node sorts its samples once per feature and scores every split point with running sums, so a fit
//! on 100 observations takes well under a millisecond. Categorical features are split into two groups of
//! categories: ordering the categories present in a node by their mean target and splitting that order is
//! the optimal binary partition for squared error (Breiman et al., CART), with no one-hot blow-up.

use std::cmp::Ordering;

use rand::seq::index;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::space::FeatureKind;

/// Smallest variance reported, as in SMAC (keeps EI's division by the standard deviation finite).
pub const VARIANCE_FLOOR: f64 = 1e-10;

#[derive(Debug, Clone, PartialEq)]
pub struct ForestSettings {
    pub n_trees: usize,
    /// Each tree sees N draws with replacement (true) or all N points (false).
    pub bootstrap: bool,
    pub min_samples_split: usize,
    pub min_samples_leaf: usize,
    pub max_depth: usize,
    /// Fraction of features tried at each split (SMAC3: 1.0).
    pub max_features_ratio: f64,
    /// Place each numeric threshold uniformly at random in the gap between the two neighbouring values
    /// instead of at its midpoint. Trees then disagree on where between two observations the prediction
    /// changes, so the forest's mean ramps across the gap instead of stepping at the midpoint, and its
    /// variance is highest between observations: both give the acquisition maximiser's local search a
    /// slope to follow where a midpoint forest is flat.
    pub random_thresholds: bool,
}

impl Default for ForestSettings {
    fn default() -> Self {
        ForestSettings {
            n_trees: 10,
            bootstrap: true,
            min_samples_split: 2,
            min_samples_leaf: 1,
            max_depth: 1 << 20,
            max_features_ratio: 1.0,
            random_thresholds: true,
        }
    }
}

const LEAF: u32 = u32::MAX;

/// A flat node: a leaf when `feature == LEAF` (then `value` is its prediction), otherwise a split that
/// sends `x[feature] <= value` (or, for categorical splits, categories in `mask`) to `left`.
#[derive(Debug, Clone)]
struct Node {
    feature: u32,
    left: u32,
    right: u32,
    value: f64,
    mask: u64,
}

#[derive(Debug, Clone)]
struct Tree {
    nodes: Vec<Node>,
}

impl Tree {
    fn predict(&self, x: &[f64]) -> f64 {
        let mut i = 0usize;
        loop {
            let node = &self.nodes[i];
            if node.feature == LEAF {
                return node.value;
            }
            let v = x[node.feature as usize];
            let left = if node.mask != 0 {
                (0.0..64.0).contains(&v) && (node.mask >> (v as u64)) & 1 == 1
            } else {
                v <= node.value
            };
            i = if left { node.left } else { node.right } as usize;
        }
    }
}

#[derive(Debug, Clone)]
pub struct Forest {
    trees: Vec<Tree>,
    n_features: usize,
}

/// A candidate split of one node.
struct Split {
    feature: usize,
    /// Squared error removed, with targets centred on the node mean: sum_l^2 / n_l + sum_r^2 / n_r.
    score: f64,
    threshold: f64,
    mask: u64,
}

/// Column-major training data shared by all trees.
struct Data<'a> {
    columns: Vec<Vec<f64>>,
    y: &'a [f64],
    kinds: &'a [FeatureKind],
}

impl Forest {
    /// Fits on rows `x` (all of length `kinds.len()`) and targets `y`. Deterministic for a given `seed`.
    ///
    /// # Panics
    /// When `x` and `y` differ in length or `x` is empty: callers own the data and never do that.
    pub fn fit(
        x: &[Vec<f64>],
        y: &[f64],
        kinds: &[FeatureKind],
        settings: &ForestSettings,
        seed: u64,
    ) -> Forest {
        assert_eq!(x.len(), y.len(), "forest: one target per row");
        assert!(!x.is_empty(), "forest: no training data");
        let d = kinds.len();
        let columns = (0..d)
            .map(|f| x.iter().map(|row| row[f]).collect())
            .collect();
        let data = Data { columns, y, kinds };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = x.len();
        let trees = (0..settings.n_trees.max(1))
            .map(|_| {
                let sample: Vec<u32> = if settings.bootstrap {
                    (0..n).map(|_| rng.random_range(0..n as u32)).collect()
                } else {
                    (0..n as u32).collect()
                };
                build_tree(&data, sample, settings, &mut rng)
            })
            .collect();
        Forest {
            trees,
            n_features: d,
        }
    }

    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// Mean over trees and variance across trees (floored at [`VARIANCE_FLOOR`]).
    pub fn predict(&self, x: &[f64]) -> (f64, f64) {
        // Welford's update: stable even when the spread is tiny next to the mean (log-scaled targets).
        let mut mean = 0.0;
        let mut m2 = 0.0;
        for (k, t) in self.trees.iter().enumerate() {
            let p = t.predict(x);
            let delta = p - mean;
            mean += delta / (k + 1) as f64;
            m2 += delta * (p - mean);
        }
        let var = (m2 / self.trees.len() as f64).max(VARIANCE_FLOOR);
        (mean, var)
    }
}

fn build_tree(
    data: &Data,
    mut samples: Vec<u32>,
    settings: &ForestSettings,
    rng: &mut ChaCha8Rng,
) -> Tree {
    let d = data.kinds.len();
    let n_try = ((settings.max_features_ratio * d as f64).floor() as usize).clamp(1, d.max(1));
    let mut nodes = vec![leaf(0.0)];
    // (node index, range start, range end, depth)
    let mut stack = vec![(0usize, 0usize, samples.len(), 0usize)];
    let mut pairs: Vec<(f64, f64)> = Vec::with_capacity(samples.len());
    while let Some((node, start, end, depth)) = stack.pop() {
        let part = &mut samples[start..end];
        let n = part.len();
        let (sum, min, max) = part.iter().fold(
            (0.0, f64::INFINITY, f64::NEG_INFINITY),
            |(s, lo, hi), &i| {
                let v = data.y[i as usize];
                (s + v, lo.min(v), hi.max(v))
            },
        );
        let mean = sum / n as f64;
        if n < settings.min_samples_split.max(2) || depth >= settings.max_depth || min == max {
            nodes[node] = leaf(mean);
            continue;
        }
        let features: Vec<usize> = if n_try >= d {
            (0..d).collect()
        } else {
            let mut f = index::sample(rng, d, n_try).into_vec();
            f.sort_unstable();
            f
        };
        // Targets are centred on the node mean, so a split's score is the squared error it removes and
        // no cancellation against a large mean can hide a real split.
        let sse: f64 = part
            .iter()
            .map(|&i| (data.y[i as usize] - mean).powi(2))
            .sum();
        let mut best: Option<Split> = None;
        for &f in &features {
            let candidate = match data.kinds[f] {
                FeatureKind::Categorical { n: k } if k <= 64 => {
                    best_categorical_split(data, f, k, part, mean, settings.min_samples_leaf)
                }
                _ => best_threshold_split(
                    data,
                    f,
                    part,
                    mean,
                    settings.min_samples_leaf,
                    &mut pairs,
                    settings.random_thresholds.then_some(&mut *rng),
                ),
            };
            if let Some(c) = candidate
                && c.score > 1e-12 * sse
                && best.as_ref().is_none_or(|b| c.score > b.score)
            {
                best = Some(c);
            }
        }
        let Some(split) = best else {
            nodes[node] = leaf(mean);
            continue;
        };
        let column = &data.columns[split.feature];
        let goes_left = |i: u32| {
            let v = column[i as usize];
            if split.mask != 0 {
                (0.0..64.0).contains(&v) && (split.mask >> (v as u64)) & 1 == 1
            } else {
                v <= split.threshold
            }
        };
        // In-place partition: left samples first.
        let mut n_left = 0;
        for k in 0..n {
            if goes_left(part[k]) {
                part.swap(k, n_left);
                n_left += 1;
            }
        }
        let left = nodes.len();
        nodes.push(leaf(0.0));
        nodes.push(leaf(0.0));
        nodes[node] = Node {
            feature: split.feature as u32,
            left: left as u32,
            right: (left + 1) as u32,
            value: split.threshold,
            mask: split.mask,
        };
        stack.push((left, start, start + n_left, depth + 1));
        stack.push((left + 1, start + n_left, end, depth + 1));
    }
    Tree { nodes }
}

fn leaf(value: f64) -> Node {
    Node {
        feature: LEAF,
        left: 0,
        right: 0,
        value,
        mask: 0,
    }
}

/// Best `x <= t` split of an ordered feature: sort once, then sweep with running sums.
fn best_threshold_split(
    data: &Data,
    f: usize,
    samples: &[u32],
    mean: f64,
    min_leaf: usize,
    pairs: &mut Vec<(f64, f64)>,
    // `Some` places the threshold at random in its gap, `None` at the midpoint.
    rng: Option<&mut ChaCha8Rng>,
) -> Option<Split> {
    let column = &data.columns[f];
    pairs.clear();
    pairs.extend(
        samples
            .iter()
            .map(|&i| (column[i as usize], data.y[i as usize] - mean)),
    );
    pairs.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    let n = pairs.len();
    let total: f64 = pairs.iter().map(|p| p.1).sum();
    let min_leaf = min_leaf.max(1);
    let mut left_sum = 0.0;
    let mut best: Option<Split> = None;
    let mut gap = (0.0, 0.0);
    for i in 0..n - 1 {
        left_sum += pairs[i].1;
        let n_left = i + 1;
        if pairs[i].0 == pairs[i + 1].0 || n_left < min_leaf || n - n_left < min_leaf {
            continue;
        }
        let right_sum = total - left_sum;
        let score =
            left_sum * left_sum / n_left as f64 + right_sum * right_sum / (n - n_left) as f64;
        if best.as_ref().is_none_or(|b| score > b.score) {
            let (a, b) = (pairs[i].0, pairs[i + 1].0);
            gap = (a, b);
            let mid = 0.5 * (a + b);
            // Adjacent floats can round the midpoint up onto `b`; `a` then separates them exactly.
            let threshold = if mid < b { mid } else { a };
            best = Some(Split {
                feature: f,
                score,
                threshold,
                mask: 0,
            });
        }
    }
    if let (Some(rng), Some(b)) = (rng, best.as_mut()) {
        let t = gap.0 + rng.random::<f64>() * (gap.1 - gap.0);
        b.threshold = if t < gap.1 { t } else { gap.0 };
    }
    best
}

/// Best two-group split of a categorical feature: categories ordered by mean target, then swept.
fn best_categorical_split(
    data: &Data,
    f: usize,
    k: usize,
    samples: &[u32],
    mean: f64,
    min_leaf: usize,
) -> Option<Split> {
    let column = &data.columns[f];
    let mut sums = vec![0.0; k];
    let mut counts = vec![0usize; k];
    for &i in samples {
        let c = (column[i as usize] as usize).min(k - 1);
        sums[c] += data.y[i as usize] - mean;
        counts[c] += 1;
    }
    let mut present: Vec<usize> = (0..k).filter(|&c| counts[c] > 0).collect();
    if present.len() < 2 {
        return None;
    }
    present.sort_by(|&a, &b| {
        (sums[a] / counts[a] as f64)
            .partial_cmp(&(sums[b] / counts[b] as f64))
            .unwrap_or(Ordering::Equal)
            .then(a.cmp(&b))
    });
    let n = samples.len();
    let total: f64 = sums.iter().sum();
    let min_leaf = min_leaf.max(1);
    let (mut left_sum, mut n_left, mut mask) = (0.0, 0usize, 0u64);
    let mut best: Option<Split> = None;
    for &c in &present[..present.len() - 1] {
        left_sum += sums[c];
        n_left += counts[c];
        mask |= 1 << c;
        if n_left < min_leaf || n - n_left < min_leaf {
            continue;
        }
        let right_sum = total - left_sum;
        let score =
            left_sum * left_sum / n_left as f64 + right_sum * right_sum / (n - n_left) as f64;
        if best.as_ref().is_none_or(|b| score > b.score) {
            best = Some(Split {
                feature: f,
                score,
                threshold: 0.0,
                mask,
            });
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step_data() -> (Vec<Vec<f64>>, Vec<f64>) {
        let x: Vec<Vec<f64>> = (0..10).map(|i| vec![i as f64 / 10.0]).collect();
        let y: Vec<f64> = (0..10).map(|i| if i < 5 { 0.0 } else { 1.0 }).collect();
        (x, y)
    }

    #[test]
    fn single_tree_learns_a_step_at_the_midpoint() {
        let (x, y) = step_data();
        let settings = ForestSettings {
            n_trees: 1,
            bootstrap: false,
            random_thresholds: false,
            ..ForestSettings::default()
        };
        let f = Forest::fit(&x, &y, &[FeatureKind::Continuous], &settings, 0);
        // The split falls halfway between 0.4 and 0.5.
        assert_eq!(f.predict(&[0.449]).0, 0.0);
        assert_eq!(f.predict(&[0.451]).0, 1.0);
        assert_eq!(f.predict(&[-1.0]), (0.0, VARIANCE_FLOOR));
    }

    #[test]
    fn random_thresholds_ramp_the_mean_across_the_gap() {
        // Without bootstrap every tree splits the step between 0.4 and 0.5, each at its own random
        // point: at a fraction q of the gap the mean is about q (the share of thresholds below it),
        // the variance q(1 - q) is largest mid-gap, and the observations themselves are fitted exactly.
        let (x, y) = step_data();
        let settings = ForestSettings {
            n_trees: 200,
            bootstrap: false,
            ..ForestSettings::default()
        };
        let f = Forest::fit(&x, &y, &[FeatureKind::Continuous], &settings, 5);
        assert_eq!(f.predict(&[0.4]), (0.0, VARIANCE_FLOOR));
        assert_eq!(f.predict(&[0.5]), (1.0, VARIANCE_FLOOR));
        let at = |q: f64| f.predict(&[0.4 + 0.1 * q]);
        let means: Vec<f64> = [0.1, 0.3, 0.5, 0.7, 0.9].iter().map(|&q| at(q).0).collect();
        assert!(means.windows(2).all(|w| w[0] <= w[1]), "{means:?}");
        for (q, m) in [0.1, 0.3, 0.5, 0.7, 0.9].iter().zip(&means) {
            assert!((m - q).abs() < 0.12, "q={q}: mean {m}");
        }
        let (m, v) = at(0.5);
        assert!((v - m * (1.0 - m)).abs() < 1e-9);
        assert!(v > at(0.1).1 && v > at(0.9).1);
    }

    #[test]
    fn forest_mean_and_variance_on_a_step() {
        let (x, y) = step_data();
        let f = Forest::fit(
            &x,
            &y,
            &[FeatureKind::Continuous],
            &ForestSettings::default(),
            42,
        );
        // Far from the step every tree agrees.
        assert_eq!(f.predict(&[0.05]), (0.0, VARIANCE_FLOOR));
        assert_eq!(f.predict(&[0.95]), (1.0, VARIANCE_FLOOR));
        // Between 0.4 and 0.5 the bootstrap decides where each tree puts its threshold: the mean is the
        // fraction p of trees predicting 1, and the variance across trees p(1 - p).
        let (m, v) = f.predict(&[0.45]);
        assert!((v - m * (1.0 - m)).abs() < 1e-9, "m={m} v={v}");
    }

    #[test]
    fn exact_fit_without_bootstrap_on_distinct_points() {
        // Grown to pure leaves, a tree reproduces every training target.
        let x: Vec<Vec<f64>> = (0..30)
            .map(|i| vec![(i * 7 % 30) as f64, (i % 4) as f64])
            .collect();
        let y: Vec<f64> = x.iter().map(|r| (r[0] * 0.3).sin() + r[1]).collect();
        let settings = ForestSettings {
            bootstrap: false,
            ..ForestSettings::default()
        };
        let kinds = [FeatureKind::Continuous, FeatureKind::Categorical { n: 4 }];
        let f = Forest::fit(&x, &y, &kinds, &settings, 1);
        for (row, target) in x.iter().zip(&y) {
            let (m, v) = f.predict(row);
            assert!((m - target).abs() < 1e-12);
            assert_eq!(v, VARIANCE_FLOOR);
        }
    }

    #[test]
    fn categorical_split_groups_by_mean() {
        // Categories 0 and 2 have target 5, 1 and 3 have target 1: one split separates {1,3} from {0,2}.
        let x: Vec<Vec<f64>> = (0..8).map(|i| vec![(i % 4) as f64]).collect();
        let y: Vec<f64> = (0..8).map(|i| if i % 2 == 0 { 5.0 } else { 1.0 }).collect();
        let settings = ForestSettings {
            n_trees: 1,
            bootstrap: false,
            ..ForestSettings::default()
        };
        let f = Forest::fit(&x, &y, &[FeatureKind::Categorical { n: 4 }], &settings, 0);
        assert_eq!(f.trees[0].nodes.len(), 3);
        assert_eq!(f.predict(&[2.0]).0, 5.0);
        assert_eq!(f.predict(&[3.0]).0, 1.0);
    }
}
