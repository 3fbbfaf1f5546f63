//! Hypervolume (minimisation): the volume dominated by a point set and bounded by a reference point.
//!
//! Two objectives use the exact sweep in O(n log n). Three or more use the WFG algorithm (While, Bradstreet
//! & Barone 2012): the volume is the sum of each point's exclusive contribution, computed recursively on
//! the "limit set" of the points after it. It is exponential in the worst case but exact, and fine for the
//! few hundred points an HPO run produces.

use super::pareto::dominates;

/// Hypervolume of `points` against `reference`. Points not strictly better than the reference in every
/// objective contribute nothing and are ignored; so are non-finite points.
pub fn hypervolume(points: &[Vec<f64>], reference: &[f64]) -> f64 {
    let d = reference.len();
    let inside: Vec<Vec<f64>> = points
        .iter()
        .filter(|p| p.len() == d && p.iter().zip(reference).all(|(x, r)| x.is_finite() && x < r))
        .cloned()
        .collect();
    match d {
        0 => 0.0,
        1 => inside
            .iter()
            .map(|p| reference[0] - p[0])
            .fold(0.0, f64::max),
        _ => wfg(non_dominated_unique(inside), reference),
    }
}

/// Exact 2-D sweep: sort by the first objective, add the slab each new lowest second objective opens.
fn hv2d(points: &[Vec<f64>], reference: &[f64]) -> f64 {
    let mut sorted: Vec<&Vec<f64>> = points.iter().collect();
    sorted.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
    let mut volume = 0.0;
    let mut level = reference[1];
    for p in sorted {
        if p[1] < level {
            volume += (reference[0] - p[0]) * (level - p[1]);
            level = p[1];
        }
    }
    volume
}

fn wfg(mut points: Vec<Vec<f64>>, reference: &[f64]) -> f64 {
    let d = reference.len();
    if points.is_empty() {
        return 0.0;
    }
    if d == 2 {
        return hv2d(&points, reference);
    }
    // Sorting by the last objective, worst first, keeps limit sets small (WFG's recommendation).
    points.sort_by(|a, b| b[d - 1].total_cmp(&a[d - 1]));
    let mut total = 0.0;
    for i in 0..points.len() {
        let box_volume: f64 = points[i]
            .iter()
            .zip(reference)
            .map(|(x, r)| r - x)
            .product();
        let limited: Vec<Vec<f64>> = points[i + 1..]
            .iter()
            .map(|q| q.iter().zip(&points[i]).map(|(a, b)| a.max(*b)).collect())
            .collect();
        total += box_volume - wfg(non_dominated_unique(limited), reference);
    }
    total
}

/// Drops dominated points and duplicates (neither changes the volume, both slow WFG down).
fn non_dominated_unique(points: Vec<Vec<f64>>) -> Vec<Vec<f64>> {
    let mut keep: Vec<Vec<f64>> = Vec::with_capacity(points.len());
    for (i, p) in points.iter().enumerate() {
        let beaten = points
            .iter()
            .enumerate()
            .any(|(j, q)| dominates(q, p) || (j < i && q == p));
        if !beaten {
            keep.push(p.clone());
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Inclusion-exclusion over all subsets: the intersection of the boxes [p, ref] is the box
    /// [max p, ref]. Exact, exponential, independent of WFG.
    fn brute_force(points: &[Vec<f64>], reference: &[f64]) -> f64 {
        let n = points.len();
        let mut total = 0.0;
        for mask in 1u32..(1 << n) {
            let mut corner = vec![f64::NEG_INFINITY; reference.len()];
            for (i, p) in points.iter().enumerate() {
                if mask & (1 << i) != 0 {
                    for (c, x) in corner.iter_mut().zip(p) {
                        *c = c.max(*x);
                    }
                }
            }
            let vol: f64 = corner
                .iter()
                .zip(reference)
                .map(|(c, r)| (r - c).max(0.0))
                .product();
            total += if mask.count_ones() % 2 == 1 {
                vol
            } else {
                -vol
            };
        }
        total
    }

    #[test]
    fn two_d_staircase() {
        // Boxes to (4,4): (1,3) -> 3x1, (2,2) adds 2x1, (3,1) adds 1x1: total 6.
        let p = vec![
            vec![2.0, 2.0],
            vec![1.0, 3.0],
            vec![3.0, 1.0],
            vec![3.0, 3.0],
        ];
        assert!((hypervolume(&p, &[4.0, 4.0]) - 6.0).abs() < 1e-12);
        // A point on the reference boundary adds nothing.
        let p = vec![vec![0.0, 4.0], vec![1.0, 1.0]];
        assert!((hypervolume(&p, &[4.0, 4.0]) - 9.0).abs() < 1e-12);
        assert_eq!(hypervolume(&[], &[1.1, 1.1]), 0.0);
    }

    #[test]
    fn two_d_zdt1_front_sample() {
        // f2 = 1 - sqrt(f1) at f1 = 0, 0.25, 1 against (1.1, 1.1):
        // 1.1*0.1 (f1=0 to 1.1 above f2=1) + 0.85*0.5 + 0.1*0.5 = 0.11 + 0.425 + 0.05.
        let p = vec![vec![0.0, 1.0], vec![0.25, 0.5], vec![1.0, 0.0]];
        assert!((hypervolume(&p, &[1.1, 1.1]) - 0.585).abs() < 1e-12);
    }

    #[test]
    fn three_d_unit_vectors() {
        // Three boxes of volume 4, pairwise overlaps 2, triple overlap 1: 12 - 6 + 1 = 7.
        let p = vec![
            vec![1.0, 0.0, 0.0],
            vec![0.0, 1.0, 0.0],
            vec![0.0, 0.0, 1.0],
        ];
        assert!((hypervolume(&p, &[2.0, 2.0, 2.0]) - 7.0).abs() < 1e-12);
        let single = vec![vec![0.5, 0.25, 0.0, 1.0]];
        assert!((hypervolume(&single, &[1.0, 1.0, 1.0, 2.0]) - 0.375).abs() < 1e-12);
    }

    #[test]
    fn matches_inclusion_exclusion_in_3_and_4_d() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for d in [2usize, 3, 4] {
            for _ in 0..20 {
                let points: Vec<Vec<f64>> = (0..8)
                    .map(|_| (0..d).map(|_| rng.random::<f64>()).collect())
                    .collect();
                let reference = vec![1.0; d];
                let exact = brute_force(&points, &reference);
                let got = hypervolume(&points, &reference);
                assert!((exact - got).abs() < 1e-9, "d={d}: {exact} vs {got}");
            }
        }
    }
}
