//! Rank agreement between budgets: how well the measurements at a lower budget order the same
//! configurations as a higher budget does.
//!
//! Promotions sort a rung by non-dominated fronts, so the agreement that matters is that of the
//! *front rank* (the index of a configuration's front in a non-dominated sort), compared by
//! Spearman's correlation. The adaptive schedule ([`super::adaptive`]) measures it as the run
//! goes, over configurations that ran at both budgets without being selected in between, and
//! [`prob_at_least`] turns it into the confidence that a budget ranks at least as well as a
//! threshold, so that a few lucky pairs do not swing the schedule.

use statrs::function::erf::erfc;
use statrs::statistics::{Data, OrderStatistics, RankTieBreaker};

use super::pareto;

/// Each point's front index in a non-dominated sort (0 = Pareto front). With one objective this
/// is the rank of the value (ties share the index).
pub fn front_ranks(points: &[Vec<f64>]) -> Vec<f64> {
    let mut rank = vec![0.0; points.len()];
    for (f, front) in pareto::non_dominated_sort(points).into_iter().enumerate() {
        for i in front {
            rank[i] = f as f64;
        }
    }
    rank
}

/// Spearman's rank correlation: Pearson's on the ranks, ties given their mean rank. NaN when
/// either side is constant, the lengths differ or a value is NaN.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() || a.len() < 2 || a.iter().chain(b).any(|v| v.is_nan()) {
        return f64::NAN;
    }
    let ra = Data::new(a.to_vec()).ranks(RankTieBreaker::Average);
    let rb = Data::new(b.to_vec()).ranks(RankTieBreaker::Average);
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        cov += (x - ma) * (y - mb);
        va += (x - ma).powi(2);
        vb += (y - mb).powi(2);
    }
    if va == 0.0 || vb == 0.0 {
        return f64::NAN;
    }
    cov / (va * vb).sqrt()
}

/// Spearman correlation of the front ranks of paired measurements: `low[i]` and `high[i]` are
/// the same configuration at a lower and a higher budget. Each side is sorted on its own.
pub fn front_rank_agreement(low: &[Vec<f64>], high: &[Vec<f64>]) -> f64 {
    if low.len() != high.len() {
        return f64::NAN;
    }
    spearman(&front_ranks(low), &front_ranks(high))
}

/// The probability that the true rank correlation is at least `threshold`, given `rho` measured
/// over `n` pairs: Fisher's z-transform with Spearman's standard error `sqrt(1.06 / (n - 3))`
/// (Fieller, Hartley and Pearson 1957). 0.5 (no evidence either way) below 4 pairs or for a NaN
/// `rho`, e.g. when every pair shares one front.
pub fn prob_at_least(rho: f64, n: usize, threshold: f64) -> f64 {
    if n < 4 || !rho.is_finite() {
        return 0.5;
    }
    // atanh is infinite at +-1: a perfect agreement over few pairs is still a finite z.
    let z = |r: f64| r.clamp(-0.999, 0.999).atanh();
    let se = (1.06 / (n as f64 - 3.0)).sqrt();
    let t = (z(rho) - z(threshold)) / se;
    // Standard normal CDF.
    0.5 * erfc(-t / std::f64::consts::SQRT_2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_matches_hand_computation() {
        // No ties: d = (0, 1, 1, 0), 1 - 6 * 2 / (4 * 15) = 0.8.
        let r = spearman(&[1.0, 2.0, 3.0, 4.0], &[1.0, 3.0, 2.0, 4.0]);
        assert!((r - 0.8).abs() < 1e-12, "{r}");
        // Ties: ranks of y are (1, 2, 3.5, 5, 3.5); covariance 8, variances 10 and 9.5.
        let r = spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[5.0, 6.0, 7.0, 8.0, 7.0]);
        assert!((r - 8.0 / 95f64.sqrt()).abs() < 1e-12, "{r}");
        assert!((spearman(&[1.0, 2.0, 3.0], &[30.0, 20.0, 10.0]) + 1.0).abs() < 1e-12);
        assert!(spearman(&[1.0, 1.0], &[1.0, 2.0]).is_nan());
    }

    #[test]
    fn front_rank_agreement_sees_reversed_fronts() {
        // Three nested fronts at the high budget: {a}, {b, c}, {d}.
        let high = vec![
            vec![0.0, 0.0],
            vec![1.0, 2.0],
            vec![2.0, 1.0],
            vec![3.0, 3.0],
        ];
        // Same order at the low budget (shifted, scaled): perfect agreement.
        let same: Vec<Vec<f64>> = high
            .iter()
            .map(|p| vec![2.0 * p[0] + 1.0, p[1] + 5.0])
            .collect();
        assert!((front_rank_agreement(&same, &high) - 1.0).abs() < 1e-12);
        // The low budget turns the order round: d first, a last.
        let reversed: Vec<Vec<f64>> = high.iter().map(|p| vec![-p[0], -p[1]]).collect();
        assert!((front_rank_agreement(&reversed, &high) + 1.0).abs() < 1e-12);
        // All on one front on one side: no ranking to compare.
        let flat = vec![
            vec![0.0, 3.0],
            vec![1.0, 2.0],
            vec![2.0, 1.0],
            vec![3.0, 0.0],
        ];
        assert!(front_rank_agreement(&flat, &high).is_nan());
        assert_eq!(front_ranks(&high), vec![0.0, 1.0, 1.0, 2.0]);
    }

    #[test]
    fn confidence_grows_with_pairs_and_is_neutral_without_them() {
        assert_eq!(prob_at_least(0.9, 3, 0.5), 0.5);
        assert_eq!(prob_at_least(f64::NAN, 50, 0.5), 0.5);
        // At the threshold itself: even odds, whatever n.
        assert!((prob_at_least(0.5, 30, 0.5) - 0.5).abs() < 1e-12);
        // Hand computation: n = 13, se = sqrt(0.106); atanh 0.9 - atanh 0.5 = 0.92297;
        // t = 2.8349, Phi(t) = 0.99771.
        assert!((prob_at_least(0.9, 13, 0.5) - 0.99771).abs() < 1e-4);
        // More pairs, more certainty, both ways.
        assert!(prob_at_least(0.8, 30, 0.5) > prob_at_least(0.8, 8, 0.5));
        assert!(prob_at_least(0.2, 30, 0.5) < prob_at_least(0.2, 8, 0.5));
        assert!(prob_at_least(0.2, 30, 0.5) < 0.05);
        // A perfect agreement over few pairs is finite evidence.
        let p = prob_at_least(1.0, 5, 0.5);
        assert!(p > 0.9 && p < 1.0, "{p}");
    }
}
