//! Initial design: the default configuration followed by Owen-scrambled Sobol points.

use std::collections::HashSet;

use crate::space::SearchSpace;

/// SMAC's rule: 10 configurations per hyperparameter, at most 25% of the trial budget, at least 1.
pub fn default_size(n_params: usize, max_trials: usize) -> usize {
    (10 * n_params).min(max_trials / 4).max(1)
}

/// `n` points of the scrambled Sobol sequence in `[0, 1)^dims`.
///
/// sobol_burley has 256 dimensions; beyond that, dimensions repeat under a different seed, which is the
/// padding its documentation recommends. Indices past 2^16 wrap (an initial design never needs that many).
pub fn sobol_points(n: usize, dims: usize, seed: u32) -> Vec<Vec<f64>> {
    sobol_range(0, n, dims, seed)
}

/// Points `start..start + n` of the sequence [`sobol_points`] draws from.
fn sobol_range(start: usize, n: usize, dims: usize, seed: u32) -> Vec<Vec<f64>> {
    (start..start + n)
        .map(|i| {
            (0..dims)
                .map(|d| {
                    let pad = (d / 256) as u32;
                    let index = (i % (1 << 16)) as u32;
                    f64::from(sobol_burley::sample(
                        index,
                        (d % 256) as u32,
                        seed.wrapping_add(pad.wrapping_mul(0x9E37_79B9)),
                    ))
                })
                .collect()
        })
        .collect()
}

/// `size` distinct vectors: the default configuration first, then Sobol points mapped into the space.
///
/// Discrete spaces can map different Sobol points onto one configuration; duplicates are dropped and
/// more points drawn, so the design may come out shorter only when the space itself is that small.
pub fn initial_design(space: &SearchSpace, size: usize, seed: u32) -> Vec<Vec<f64>> {
    initial_design_where(space, size, seed, &|_| true, 16 * size + 64)
}

/// [`initial_design`] keeping only Sobol points that `keep` accepts (a known-ahead constraint), drawing
/// up to `max_draws` points so a mostly infeasible space still fills the design. The default
/// configuration is always first whatever `keep` says: it is the baseline every run evaluates.
pub fn initial_design_where(
    space: &SearchSpace,
    size: usize,
    seed: u32,
    keep: &dyn Fn(&[f64]) -> bool,
    max_draws: usize,
) -> Vec<Vec<f64>> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(size);
    let default = space.default_vector();
    if size == 0 {
        return out;
    }
    seen.insert(SearchSpace::key(&default));
    out.push(default);
    let mut drawn = 0;
    // Draw in rounds so a heavily duplicating discrete space cannot loop forever.
    while out.len() < size && drawn < max_draws {
        let want = size - out.len();
        for p in &sobol_range(drawn, want, space.len(), seed) {
            let v = space.from_unit(p);
            if seen.insert(SearchSpace::key(&v)) && keep(&v) {
                out.push(v);
                if out.len() == size {
                    break;
                }
            }
        }
        drawn += want;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::ParamSpec;

    #[test]
    fn sobol_strata_are_evenly_hit() {
        // 64 scrambled Sobol points: every 1/8 stratum of every dimension holds exactly 8 of them, and every
        // 2-D cell of a 8x8 grid over the first two dimensions exactly one.
        let pts = sobol_points(64, 5, 1234);
        for d in 0..5 {
            let mut counts = [0usize; 8];
            for p in &pts {
                assert!((0.0..1.0).contains(&p[d]));
                counts[(p[d] * 8.0) as usize] += 1;
            }
            assert_eq!(counts, [8; 8], "dimension {d}");
        }
        let mut grid = [[0usize; 8]; 8];
        for p in &pts {
            grid[(p[0] * 8.0) as usize][(p[1] * 8.0) as usize] += 1;
        }
        assert!(grid.iter().flatten().all(|&c| c == 1));
    }

    #[test]
    fn seeds_change_the_points() {
        assert_ne!(sobol_points(4, 2, 1), sobol_points(4, 2, 2));
        assert_eq!(sobol_points(4, 2, 1), sobol_points(4, 2, 1));
    }

    #[test]
    fn design_starts_with_default_and_has_no_duplicates() {
        let space = SearchSpace::new(
            vec![
                ParamSpec::float("x", 0.0, 1.0, 0.25),
                ParamSpec::categorical("c", &["a", "b"], "b"),
            ],
            None,
        )
        .unwrap();
        let d = initial_design(&space, 20, 5);
        assert_eq!(d.len(), 20);
        assert_eq!(d[0], vec![0.25, 1.0]);
        let keys: HashSet<_> = d.iter().map(|v| SearchSpace::key(v)).collect();
        assert_eq!(keys.len(), 20);
        // A space with only 3 configurations yields 3.
        let tiny = SearchSpace::new(vec![ParamSpec::int("k", 1, 3, 2)], None).unwrap();
        assert_eq!(initial_design(&tiny, 10, 0).len(), 3);
    }

    #[test]
    fn a_filtered_design_keeps_the_default_and_fills_up_with_accepted_points() {
        let space = SearchSpace::new(
            vec![
                ParamSpec::float("x", 0.0, 1.0, 0.95),
                ParamSpec::float("y", 0.0, 1.0, 0.5),
            ],
            None,
        )
        .unwrap();
        // 90% of the square is rejected, the default among it.
        let keep = |v: &[f64]| v[0] < 0.1;
        let d = initial_design_where(&space, 20, 7, &keep, 10_000);
        assert_eq!(d.len(), 20);
        assert_eq!(d[0], vec![0.95, 0.5]);
        assert!(d[1..].iter().all(|v| keep(v)));
        // Nothing accepted: only the default, after a bounded number of draws.
        assert_eq!(
            initial_design_where(&space, 20, 7, &|_| false, 1000).len(),
            1
        );
        // Accepting everything is the plain design.
        assert_eq!(
            initial_design_where(&space, 20, 7, &|_| true, 16 * 20 + 64),
            initial_design(&space, 20, 7)
        );
    }

    #[test]
    fn smac_size_rule() {
        assert_eq!(default_size(6, 100), 25);
        assert_eq!(default_size(2, 100), 20);
        assert_eq!(default_size(9, 1000), 90);
        assert_eq!(default_size(3, 2), 1);
    }
}
