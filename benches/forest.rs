//! The surrogate's cost: fitting the random forest (SMAC3's defaults) on 100 observations of
//! 8 continuous parameters, the size of a search after 100 trials. The goal is a whole
//! suggestion under 15 ms; `dsnn-hpo bench` reports that end to end.
//!
//! Run: `cargo bench --no-default-features --bench forest`

use std::hint::black_box;

use criterion::Criterion;
use dsnn_hpo::opt::forest::{Forest, ForestSettings};
use dsnn_hpo::space::FeatureKind;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn main() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let x: Vec<Vec<f64>> = (0..100)
        .map(|_| (0..8).map(|_| rng.random::<f64>()).collect())
        .collect();
    let y: Vec<f64> = x.iter().map(|r| r.iter().map(|v| v * v).sum()).collect();
    let kinds = vec![FeatureKind::Continuous; 8];
    let settings = ForestSettings::default();
    let mut c = Criterion::default().configure_from_args();
    let mut seed = 0;
    c.bench_function("forest fit, 100 observations x 8 parameters", |b| {
        b.iter(|| {
            seed += 1;
            black_box(Forest::fit(&x, &y, &kinds, &settings, seed))
        })
    });
    c.final_summary();
}
