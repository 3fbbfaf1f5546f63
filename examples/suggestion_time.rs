//! Time per suggestion (ask + tell, the objective excluded) of the optimizer under multi-fidelity,
//! with the surrogate on every budget and on one budget: ZDT1 under ASHA (or the schedule given)
//! 1-27 (eta 3), the objectives independent of the budget, sequential.
//!
//!   cargo run --release --no-default-features --example suggestion_time [-- TRIALS SEEDS [asha|adaptive|hyperband]]
//!
//! Prints the mean time of the 20 suggestions around 100, 500 and 1,000 finished trials (those
//! that TRIALS reaches), in ms, per `model_data`, median over seeds.

use std::time::Instant;

use dsnn_hpo::eval::problems::{N_VARS, Problem};
use dsnn_hpo::opt::{Ask, Budgets, ModelData, Outcome, Schedule, Smbo, SmboSettings};

fn times(schedule: Schedule, model_data: ModelData, trials: usize, seed: u64) -> Vec<f64> {
    let budgets = Budgets {
        schedule,
        ..Budgets::epochs(1, 27, 3)
    };
    let mut settings = SmboSettings::new(2, trials, budgets, seed);
    settings.model_data = model_data;
    let mut opt = Smbo::new(Problem::Zdt1.space(), settings).expect("settings");
    let mut out = Vec::with_capacity(trials);
    loop {
        let start = Instant::now();
        let Ask::Trial(t) = opt.ask() else { break };
        let mut spent = start.elapsed();
        let x: Vec<f64> = (1..=N_VARS)
            .map(|i| t.config.f64(&format!("x{i}")).unwrap_or(0.5))
            .collect();
        let f = Problem::Zdt1.evaluate(&x).to_vec();
        let start = Instant::now();
        opt.tell(t.id, Outcome::Success { objectives: f })
            .expect("tell");
        spent += start.elapsed();
        out.push(spent.as_secs_f64() * 1e3);
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let arg = |k: usize, d: usize| {
        std::env::args()
            .nth(k)
            .and_then(|a| a.parse().ok())
            .unwrap_or(d)
    };
    let (trials, seeds) = (arg(1, 1000), arg(2, 3) as u64);
    let schedule = match std::env::args().nth(3).as_deref() {
        None | Some("asha") => Schedule::Asha,
        Some("adaptive") => Schedule::Adaptive,
        Some("hyperband") => Schedule::Hyperband,
        Some(other) => {
            eprintln!("suggestion_time: schedule {other:?}: expected asha, adaptive or hyperband");
            std::process::exit(2);
        }
    };
    println!("ms per suggestion (ask + tell), ZDT1, {schedule:?} 1-27, median over {seeds} seeds");
    for (name, model_data) in [
        ("all-budgets", ModelData::AllBudgets),
        ("one-budget", ModelData::OneBudget),
    ] {
        let runs: Vec<Vec<f64>> = (0..seeds)
            .map(|s| times(schedule, model_data, trials, s))
            .collect();
        let mut line = format!("{name:<12}");
        for at in [100usize, 500, 1000].into_iter().filter(|&a| a <= trials) {
            let window = |t: &Vec<f64>| {
                let (lo, hi) = (at.saturating_sub(10), (at + 10).min(t.len()));
                t[lo..hi].iter().sum::<f64>() / (hi - lo) as f64
            };
            line += &format!("  @{at}: {:7.2}", median(runs.iter().map(window).collect()));
        }
        println!("{line}");
    }
}
