//! Pareto dominance for minimisation: non-dominated sorting, crowding distance, NSGA-II selection.

use std::cmp::Ordering;

/// `a` dominates `b`: no worse in every objective and better in at least one.
pub fn dominates(a: &[f64], b: &[f64]) -> bool {
    let mut better = false;
    for (x, y) in a.iter().zip(b) {
        if x > y {
            return false;
        }
        if x < y {
            better = true;
        }
    }
    better
}

/// Indices of the points no other point dominates, in input order (equal points are all kept).
pub fn non_dominated(points: &[Vec<f64>]) -> Vec<usize> {
    (0..points.len())
        .filter(|&i| !points.iter().any(|q| dominates(q, &points[i])))
        .collect()
}

/// Fronts of the fast non-dominated sort (Deb et al. 2002): front 0 is the Pareto front, front 1 the
/// front once front 0 is removed, and so on. Indices within a front are in input order.
pub fn non_dominated_sort(points: &[Vec<f64>]) -> Vec<Vec<usize>> {
    let n = points.len();
    let mut dominated_by_count = vec![0usize; n];
    let mut dominates_list: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in 0..n {
        for j in (i + 1)..n {
            if dominates(&points[i], &points[j]) {
                dominates_list[i].push(j);
                dominated_by_count[j] += 1;
            } else if dominates(&points[j], &points[i]) {
                dominates_list[j].push(i);
                dominated_by_count[i] += 1;
            }
        }
    }
    let mut fronts = Vec::new();
    let mut current: Vec<usize> = (0..n).filter(|&i| dominated_by_count[i] == 0).collect();
    while !current.is_empty() {
        let mut next = Vec::new();
        for &i in &current {
            for &j in &dominates_list[i] {
                dominated_by_count[j] -= 1;
                if dominated_by_count[j] == 0 {
                    next.push(j);
                }
            }
        }
        next.sort_unstable();
        fronts.push(current);
        current = next;
    }
    fronts
}

/// NSGA-II crowding distance of each member of `front` (same order as `front`).
///
/// Per objective the front is sorted; the two extremes get infinity and inner points add the gap between
/// their neighbours divided by the objective's range. Objectives with zero range add nothing.
pub fn crowding_distance(points: &[Vec<f64>], front: &[usize]) -> Vec<f64> {
    let m = front.len();
    let mut distance = vec![0.0; m];
    if m == 0 {
        return distance;
    }
    let n_obj = points[front[0]].len();
    let mut order: Vec<usize> = (0..m).collect();
    // `k` picks the objective inside each point; there is no collection of objectives to iterate.
    #[allow(clippy::needless_range_loop)]
    for k in 0..n_obj {
        order.sort_by(|&a, &b| {
            points[front[a]][k]
                .partial_cmp(&points[front[b]][k])
                .unwrap_or(Ordering::Equal)
                .then(a.cmp(&b))
        });
        let lo = points[front[order[0]]][k];
        let hi = points[front[order[m - 1]]][k];
        distance[order[0]] = f64::INFINITY;
        distance[order[m - 1]] = f64::INFINITY;
        if hi > lo {
            for w in 1..m.saturating_sub(1) {
                let gap = points[front[order[w + 1]]][k] - points[front[order[w - 1]]][k];
                distance[order[w]] += gap / (hi - lo);
            }
        }
    }
    distance
}

/// The `k` best points: whole fronts while they fit, then the most crowded-apart members of the front
/// that does not fit (ties by input order, so the choice is deterministic).
pub fn select_best(points: &[Vec<f64>], k: usize) -> Vec<usize> {
    let mut chosen = Vec::with_capacity(k.min(points.len()));
    for front in non_dominated_sort(points) {
        if chosen.len() >= k {
            break;
        }
        let room = k - chosen.len();
        if front.len() <= room {
            chosen.extend(front);
        } else {
            let cd = crowding_distance(points, &front);
            let mut order: Vec<usize> = (0..front.len()).collect();
            order.sort_by(|&a, &b| {
                cd[b]
                    .partial_cmp(&cd[a])
                    .unwrap_or(Ordering::Equal)
                    .then(a.cmp(&b))
            });
            chosen.extend(order[..room].iter().map(|&i| front[i]));
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pts(v: &[[f64; 2]]) -> Vec<Vec<f64>> {
        v.iter().map(|p| p.to_vec()).collect()
    }

    #[test]
    fn dominance_is_strict_in_one_objective() {
        assert!(dominates(&[1.0, 2.0], &[1.0, 3.0]));
        assert!(!dominates(&[1.0, 2.0], &[1.0, 2.0]));
        assert!(!dominates(&[1.0, 4.0], &[2.0, 3.0]));
    }

    #[test]
    fn sorts_into_known_fronts() {
        // Front 0: (1,5) (2,3) (4,1); front 1: (3,4) (5,2); front 2: (6,6).
        let p = pts(&[
            [3.0, 4.0],
            [1.0, 5.0],
            [6.0, 6.0],
            [2.0, 3.0],
            [5.0, 2.0],
            [4.0, 1.0],
        ]);
        assert_eq!(
            non_dominated_sort(&p),
            vec![vec![1, 3, 5], vec![0, 4], vec![2]]
        );
        assert_eq!(non_dominated(&p), vec![1, 3, 5]);
    }

    #[test]
    fn crowding_distance_hand_checked() {
        // Front sorted by f1: (0,4) (1,2) (3,1) (4,0); ranges 4 and 4.
        let p = pts(&[[1.0, 2.0], [0.0, 4.0], [4.0, 0.0], [3.0, 1.0]]);
        let cd = crowding_distance(&p, &[0, 1, 2, 3]);
        assert!(cd[1].is_infinite() && cd[2].is_infinite());
        // (1,2): f1 gap (3-0)/4, f2 gap (4-1)/4 -> 1.5. (3,1): (4-1)/4 + (2-0)/4 -> 1.25.
        assert!((cd[0] - 1.5).abs() < 1e-12);
        assert!((cd[3] - 1.25).abs() < 1e-12);
    }

    #[test]
    fn selection_takes_fronts_then_crowding() {
        let p = pts(&[
            [0.0, 4.0],
            [1.0, 2.0],
            [3.0, 1.0],
            [4.0, 0.0],
            [2.0, 3.5],
            [5.0, 5.0],
        ]);
        // Front 0 has 4 members; picking 3 drops the least crowded-apart inner point (3,1).
        let mut s = select_best(&p, 3);
        s.sort_unstable();
        assert_eq!(s, vec![0, 1, 3]);
        let mut s = select_best(&p, 5);
        s.sort_unstable();
        assert_eq!(s, vec![0, 1, 2, 3, 4]);
        assert_eq!(select_best(&p, 10).len(), 6);
        assert!(select_best(&p, 0).is_empty());
    }
}
