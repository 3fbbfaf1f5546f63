//! What a study store adds to the optimizer: the time of one ask + tell (claim with the
//! optimizer's decision inside, then finish) at 100 and 1,000 finished trials, in memory, in
//! SQLite and in PostgreSQL, next to the bare optimizer's ask + tell without any store.
//!
//!   cargo run --release --example study_overhead [-- TRIALS]
//!
//! PostgreSQL is measured when `DSNN_HPO_TEST_POSTGRES` names a database (a fresh schema is made
//! and dropped). The objective is ZDT1 (single fidelity), so the time is the optimizer's and the
//! store's alone. Medians over the 21 trials around each mark.

use std::time::Instant;

use dsnn_hpo::eval::problems::{N_VARS, Problem};
use dsnn_hpo::opt::{Ask, Budgets, Outcome, Smbo, SmboSettings};
use dsnn_hpo::search::replica::Replica;
use dsnn_hpo::store::{self, Claim, LeaseSettings, NewStudy, Owner, RunInfo, Store, TrialLine};

fn smbo(trials: usize) -> Smbo {
    let p = Problem::Zdt1;
    Smbo::new(
        p.space(),
        SmboSettings::new(2, trials, Budgets::single(1.0), 7),
    )
    .expect("smbo")
}

fn objectives(trial: &dsnn_hpo::opt::Trial) -> Vec<f64> {
    let x: Vec<f64> = (1..=N_VARS)
        .map(|i| trial.config.f64(&format!("x{i}")).unwrap_or(0.5))
        .collect();
    Problem::Zdt1.evaluate(&x).to_vec()
}

/// Median and mean over the 51 trials around `mark`: proposals alternate between cheap ones
/// (front recombination, random) and model fits, so the mean says what a trial costs on average.
fn around(times: &[f64], mark: usize) -> (f64, f64) {
    let lo = mark.saturating_sub(25);
    let hi = (mark + 26).min(times.len());
    let mut w: Vec<f64> = times[lo..hi].to_vec();
    let mean = w.iter().sum::<f64>() / w.len().max(1) as f64;
    w.sort_by(f64::total_cmp);
    (w.get(w.len() / 2).copied().unwrap_or(f64::NAN), mean)
}

/// Milliseconds of each ask + tell, trial by trial.
fn bare(trials: usize) -> Vec<f64> {
    let mut s = smbo(trials);
    let mut times = Vec::new();
    loop {
        let t0 = Instant::now();
        let Ask::Trial(t) = s.ask() else { break };
        let f = objectives(&t);
        s.tell(t.id, Outcome::Success { objectives: f })
            .expect("tell");
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    times
}

fn with_store(mut st: Box<dyn Store>, trials: usize) -> Vec<f64> {
    let info = RunInfo {
        objectives: vec!["f1".into(), "f2".into()],
        objective_sources: vec![],
        default_config: Problem::Zdt1.space().default_config(),
        meta_hash: "bench".into(),
        constraint_reference: Default::default(),
        config_toml: String::new(),
    };
    st.create_study(&NewStudy {
        name: "overhead".into(),
        info,
        leases: LeaseSettings::default(),
        data_fingerprint: None,
        version: env!("CARGO_PKG_VERSION").into(),
    })
    .expect("create study");
    let mut replica = Replica::new(smbo(trials), None);
    let owner = Owner::this_process("bench");
    let mut times = Vec::new();
    loop {
        let t0 = Instant::now();
        let since = replica.since;
        let claim = st
            .claim("overhead", &owner, since, &mut |ev| replica.decide(ev))
            .expect("claim");
        let Claim::Run(lease) = claim else { break };
        let f = objectives(&lease.trial);
        let line = TrialLine::of(
            &lease.trial,
            &Outcome::Success { objectives: f },
            None,
            Vec::new(),
            0.0,
            0.0,
        );
        assert!(st.finish(&lease, &line, None).expect("finish"));
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    times
}

fn main() {
    let trials: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let marks = [100usize, trials.min(1000) - 26];
    let tmp = std::env::temp_dir().join(format!("dsnn-overhead-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let mut rows: Vec<(String, Vec<f64>)> = vec![("optimizer alone".into(), bare(trials))];
    rows.push((
        "memory store".into(),
        with_store(Box::new(store::memory::MemoryStore::new()), trials),
    ));
    let db = tmp.join("overhead.db");
    rows.push((
        "sqlite store".into(),
        with_store(
            store::open(&format!("sqlite://{}", db.display())).expect("sqlite"),
            trials,
        ),
    ));
    let pg = store::postgres::TestSchemas::from_env();
    if let Some(pg) = &pg {
        rows.push((
            "postgresql store".into(),
            with_store(store::open(&pg.fresh_url()).expect("postgresql"), trials),
        ));
    }
    println!(
        "ms of one ask + tell over the 51 trials around trial {} and {} (ZDT1, 2 objectives, ParEGO + forest): median / mean, and the mean against the memory store",
        marks[0], marks[1]
    );
    let mem = [
        around(&rows[1].1, marks[0]).1,
        around(&rows[1].1, marks[1]).1,
    ];
    for (name, times) in &rows {
        let (a, am) = around(times, marks[0]);
        let (b, bm) = around(times, marks[1]);
        println!(
            "{name:<18} @{}: {a:>6.2} / {am:>6.2} ({:>+6.1}%)   @{}: {b:>6.2} / {bm:>6.2} ({:>+6.1}%)",
            marks[0],
            (am / mem[0] - 1.0) * 100.0,
            marks[1],
            (bm / mem[1] - 1.0) * 100.0
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
