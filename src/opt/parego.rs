//! ParEGO (Knowles 2006) as SMAC3 uses it: one random augmented-Chebyshev scalarisation per model fit.

use rand::Rng;

/// Weight of the linear term in the augmented Chebyshev function (Knowles' and SMAC's value).
pub const RHO: f64 = 0.05;

/// Weights drawn uniformly from the simplex (normalised exponentials, i.e. Dirichlet(1, ..., 1)).
///
/// SMAC3 normalises uniform draws from the cube, which favours the centre of the simplex; the uniform
/// simplex spreads scalarisations evenly over the front, which is what ParEGO's paper intends.
pub fn draw_weights<R: Rng + ?Sized>(n_objectives: usize, rng: &mut R) -> Vec<f64> {
    let e: Vec<f64> = (0..n_objectives)
        .map(|_| -(1.0 - rng.random::<f64>()).ln())
        .collect();
    let sum: f64 = e.iter().sum();
    if sum > 0.0 {
        e.iter().map(|x| x / sum).collect()
    } else {
        vec![1.0 / n_objectives as f64; n_objectives]
    }
}

/// Min-max normalises each objective over the successful entries (`Some`); failed entries (`None`) get
/// the crash cost 1.0 per objective, i.e. as bad as the worst success. A constant objective maps to 0.
pub fn normalise(costs: &[Option<&[f64]>], n_objectives: usize) -> Vec<Vec<f64>> {
    let mut lo = vec![f64::INFINITY; n_objectives];
    let mut hi = vec![f64::NEG_INFINITY; n_objectives];
    for c in costs.iter().flatten() {
        for k in 0..n_objectives {
            lo[k] = lo[k].min(c[k]);
            hi[k] = hi[k].max(c[k]);
        }
    }
    costs
        .iter()
        .map(|c| match c {
            None => vec![1.0; n_objectives],
            Some(c) => (0..n_objectives)
                .map(|k| {
                    if hi[k] > lo[k] {
                        (c[k] - lo[k]) / (hi[k] - lo[k])
                    } else {
                        0.0
                    }
                })
                .collect(),
        })
        .collect()
}

/// `max_i(theta_i c_i) + rho * sum_i(theta_i c_i)`.
pub fn scalarise(theta: &[f64], normalised: &[f64]) -> f64 {
    let mut max = f64::NEG_INFINITY;
    let mut sum = 0.0;
    for (t, c) in theta.iter().zip(normalised) {
        let w = t * c;
        max = max.max(w);
        sum += w;
    }
    max + RHO * sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn scalarisation_values() {
        // max(0.3*0.5, 0.7*0.2) = 0.15; sum = 0.15 + 0.14 = 0.29; 0.15 + 0.05 * 0.29 = 0.1645.
        assert!((scalarise(&[0.3, 0.7], &[0.5, 0.2]) - 0.1645).abs() < 1e-12);
        // Equal weights at the worst corner: 0.5 + 0.05 * 1.0.
        assert!((scalarise(&[0.5, 0.5], &[1.0, 1.0]) - 0.55).abs() < 1e-12);
        assert_eq!(scalarise(&[0.2, 0.8], &[0.0, 0.0]), 0.0);
    }

    #[test]
    fn normalisation_uses_successes_and_crash_cost() {
        let a = [1.0, 10.0];
        let b = [3.0, 30.0];
        let c = [2.0, 10.0];
        let n = normalise(&[Some(&a), None, Some(&b), Some(&c)], 2);
        assert_eq!(
            n,
            vec![
                vec![0.0, 0.0],
                vec![1.0, 1.0],
                vec![1.0, 1.0],
                vec![0.5, 0.0]
            ]
        );
        let same = [5.0, 5.0];
        assert_eq!(normalise(&[Some(&same)], 2), vec![vec![0.0, 0.0]]);
    }

    #[test]
    fn weights_lie_on_the_simplex_and_cover_it() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut low_first = 0;
        for _ in 0..2000 {
            let w = draw_weights(2, &mut rng);
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            assert!(w.iter().all(|x| (0.0..=1.0).contains(x)));
            if w[0] < 0.2 {
                low_first += 1;
            }
        }
        // Uniform on the 1-simplex: P(w0 < 0.2) = 0.2.
        assert!((330..470).contains(&low_first), "{low_first}");
    }
}
