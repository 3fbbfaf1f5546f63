//! Does working asynchronously cost front quality? N simulated workers on one study (each its
//! own optimizer replica, as separate processes are) against one worker, after the same number
//! of trials, on ZDT1, ZDT3 and DTLZ2 with ASHA over budgets 1-9 (eta 3).
//!
//!   cargo run --release --example async_quality [-- TRIALS WORKERS SEEDS [single]]
//!
//! `single` runs single fidelity (every trial at budget 1, times 0.5 + u) instead of ASHA;
//! `LIAR=none|mean|worst` picks what the model assumes of running trials (default mean);
//! `MODEL=one` trains the model on one budget (`[search] model_data = "one-budget"`) instead of
//! every budget.
//!
//! Time is simulated (event-driven, deterministic): a trial at budget b takes b x (0.5 + u)
//! time units, u uniform in [0, 1) drawn from the seed and the trial id, so results arrive out
//! of order as real training times do. The test problems ignore the budget, so the front is the
//! hypervolume (reference 1.1, 1.1) of every finished trial.

use dsnn_hpo::eval::problems::{N_VARS, Problem};
use dsnn_hpo::opt::hypervolume::hypervolume;
use dsnn_hpo::opt::{Budgets, Liar, ModelData, Outcome, Schedule, Smbo, SmboSettings, Trial};
use dsnn_hpo::search::replica::Replica;
use dsnn_hpo::store::memory::MemoryStore;
use dsnn_hpo::store::{
    Claim, Lease, LeaseSettings, NewStudy, Owner, RunInfo, Store, TrialLine, finished_lines,
};

fn smbo(problem: Problem, trials: usize, seed: u64, asha: bool) -> Smbo {
    let budgets = if asha {
        Budgets {
            min: 1.0,
            max: 9.0,
            eta: 3.0,
            schedule: Schedule::Asha,
            integer: true,
        }
    } else {
        Budgets::single(1.0)
    };
    let mut settings = SmboSettings::new(2, trials, budgets, seed);
    settings.liar = match std::env::var("LIAR").as_deref() {
        Ok("none") => Liar::None,
        Ok("worst") => Liar::Worst,
        _ => Liar::Mean,
    };
    if std::env::var("MODEL").as_deref() == Ok("one") {
        settings.model_data = ModelData::OneBudget;
    }
    Smbo::new(problem.space(), settings).expect("smbo")
}

fn objectives(problem: Problem, trial: &Trial) -> Vec<f64> {
    let x: Vec<f64> = (1..=N_VARS)
        .map(|i| trial.config.f64(&format!("x{i}")).unwrap_or(0.5))
        .collect();
    problem.evaluate(&x).to_vec()
}

/// A deterministic uniform number in [0, 1) from the seed and the trial id (SplitMix64).
fn unit(seed: u64, id: u64) -> f64 {
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(id.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

fn run(problem: Problem, trials: usize, workers: usize, seed: u64, asha: bool) -> f64 {
    let mut st = MemoryStore::new();
    st.create_study(&NewStudy {
        name: "q".into(),
        info: RunInfo {
            objectives: vec!["f1".into(), "f2".into()],
            objective_sources: vec![],
            default_config: problem.space().default_config(),
            meta_hash: String::new(),
            constraint_reference: Default::default(),
            config_toml: String::new(),
        },
        leases: LeaseSettings::default(),
        data_fingerprint: None,
        version: String::new(),
    })
    .expect("study");
    let mut replicas: Vec<Replica> = (0..workers)
        .map(|_| Replica::new(smbo(problem, trials, seed, asha), None))
        .collect();
    let owners: Vec<Owner> = (0..workers)
        .map(|w| Owner::this_process(format!("sim {w}")))
        .collect();
    // (finish time, worker, lease)
    let mut running: Vec<(f64, usize, Lease)> = Vec::new();
    let mut idle: Vec<usize> = (0..workers).collect();
    let mut now = 0.0;
    loop {
        // Idle workers claim, in order; a worker told to wait tries again after the next finish.
        let mut still_idle = Vec::new();
        for w in idle.drain(..) {
            let r = &mut replicas[w];
            let since = r.since;
            match st
                .claim("q", &owners[w], since, &mut |ev| r.decide(ev))
                .expect("claim")
            {
                Claim::Run(lease) => {
                    let d = lease.trial.budget * (0.5 + unit(seed, lease.trial.id));
                    running.push((now + d, w, lease));
                }
                Claim::Wait => still_idle.push(w),
                Claim::Done => {}
            }
        }
        idle = still_idle;
        let Some(k) = (0..running.len()).min_by(|&a, &b| running[a].0.total_cmp(&running[b].0))
        else {
            break;
        };
        let (t, w, lease) = running.swap_remove(k);
        now = t;
        let f = objectives(problem, &lease.trial);
        let line = TrialLine::of(
            &lease.trial,
            &Outcome::Success { objectives: f },
            None,
            Vec::new(),
            0.0,
            now,
        );
        assert!(st.finish(&lease, &line, None).expect("finish"));
        idle.push(w);
    }
    let lines = finished_lines(&mut st, "q").expect("lines");
    let points: Vec<Vec<f64>> = lines.into_iter().map(|l| l.objectives).collect();
    assert_eq!(points.len(), trials, "every trial finished");
    hypervolume(&points, &[1.1, 1.1])
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn main() {
    let arg = |k: usize, d: usize| {
        std::env::args()
            .nth(k)
            .and_then(|a| a.parse().ok())
            .unwrap_or(d)
    };
    let (trials, workers, seeds) = (arg(1, 100), arg(2, 4), arg(3, 5) as u64);
    let asha = std::env::args().nth(4).as_deref() != Some("single");
    println!(
        "hypervolume after {trials} trials, {}: 1 worker vs {workers} asynchronous workers ({seeds} seeds)",
        if asha {
            "ASHA 1-9 epochs"
        } else {
            "single fidelity"
        }
    );
    for problem in [Problem::Zdt1, Problem::Zdt3, Problem::Dtlz2] {
        let one: Vec<f64> = (0..seeds)
            .map(|s| run(problem, trials, 1, s, asha))
            .collect();
        let many: Vec<f64> = (0..seeds)
            .map(|s| run(problem, trials, workers, s, asha))
            .collect();
        let (m1, mn) = (median(one.clone()), median(many.clone()));
        println!(
            "{:<6} 1 worker {:.4}  {workers} workers {:.4}  ratio {:.3}   per seed 1: {:?}  {workers}: {:?}",
            problem.name(),
            m1,
            mn,
            mn / m1,
            one.iter()
                .map(|v| (v * 1e4).round() / 1e4)
                .collect::<Vec<_>>(),
            many.iter()
                .map(|v| (v * 1e4).round() / 1e4)
                .collect::<Vec<_>>()
        );
    }
}
