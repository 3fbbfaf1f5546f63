//! The optimizer through its public API: hypervolume and sorting on hand-checked fronts, the ask/tell
//! loop (determinism, pending trials, Hyperband promotions with continuation, failures), ParEGO's
//! scalarisation, the command objective with real scripts, and a small benchmark sanity check.
//!
//! Unit tests inside the modules cover the pieces in isolation (bracket sizes, crowding distance, Sobol
//! strata, forest splits, space validation); these tests check what the pieces promise together.

use std::collections::HashSet;
use std::f64::consts::PI;
use std::time::{Duration, Instant};

use dsnn_hpo::eval::Evaluator;
use dsnn_hpo::eval::problems::Problem;
use dsnn_hpo::opt::hypervolume::hypervolume;
use dsnn_hpo::opt::pareto::{dominates, non_dominated_sort};
use dsnn_hpo::opt::{
    Ask, Budgets, Outcome, Schedule, Smbo, SmboSettings, TellError, Trial, parego,
};
use dsnn_hpo::space::{ParamSpec, SearchSpace};

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

// ---------------------------------------------------------------------------------------------------
// Hypervolume and non-dominated sorting
// ---------------------------------------------------------------------------------------------------

#[test]
fn hypervolume_of_dense_fronts_approaches_the_analytic_value() {
    // ZDT1's front f2 = 1 - sqrt(f1) against (1.1, 1.1): the dominated area is
    // int_0^1 (0.1 + sqrt f1) df1 + 0.1 * 1.1 = 0.1 + 2/3 + 0.11.
    let n = 4000;
    let zdt1: Vec<Vec<f64>> = (0..=n)
        .map(|i| {
            let f1 = i as f64 / n as f64;
            vec![f1, 1.0 - f1.sqrt()]
        })
        .collect();
    let exact = 0.1 + 2.0 / 3.0 + 0.11;
    let hv = hypervolume(&zdt1, &[1.1, 1.1]);
    // Points on the front only approximate it from inside.
    assert!(hv < exact && close(hv, exact, 1e-3), "{hv} vs {exact}");

    // DTLZ2's quarter circle: everything in the box outside the quarter disc, 1.21 - pi/4.
    let circle: Vec<Vec<f64>> = (0..=n)
        .map(|i| {
            let a = i as f64 / n as f64 * PI / 2.0;
            vec![a.cos(), a.sin()]
        })
        .collect();
    let exact = 1.21 - PI / 4.0;
    let hv = hypervolume(&circle, &[1.1, 1.1]);
    assert!(hv < exact && close(hv, exact, 1e-3), "{hv} vs {exact}");
}

#[test]
fn hypervolume_3d_hand_checked_with_dominated_duplicate_and_outside_points() {
    // Against (4,4,4): A = (1,1,3) box 9, B = (2,2,1) box 12, C = (3,1,2) box 6.
    // Pairwise intersections (component-wise max): AB (2,2,3) 4, AC (3,1,3) 3, BC (3,2,2) 4;
    // triple ABC (3,2,3) 2. Inclusion-exclusion: 27 - 11 + 2 = 18.
    let front = vec![
        vec![1.0, 1.0, 3.0],
        vec![2.0, 2.0, 1.0],
        vec![3.0, 1.0, 2.0],
    ];
    let reference = [4.0, 4.0, 4.0];
    assert!(close(hypervolume(&front, &reference), 18.0, 1e-12));
    // A dominated point (2,2,3), a duplicate of B and a point beyond the reference change nothing.
    let mut noisy = front.clone();
    noisy.push(vec![2.0, 2.0, 3.0]);
    noisy.push(vec![2.0, 2.0, 1.0]);
    noisy.push(vec![5.0, 0.0, 0.0]);
    assert!(close(hypervolume(&noisy, &reference), 18.0, 1e-12));
    // Order does not matter.
    noisy.reverse();
    assert!(close(hypervolume(&noisy, &reference), 18.0, 1e-12));
}

#[test]
fn non_dominated_sort_with_three_objectives_and_ties() {
    let p = vec![
        vec![1.0, 1.0, 1.0], // 0: front 0
        vec![2.0, 2.0, 2.0], // 1: dominated by 0 and 5 -> front 2
        vec![0.0, 3.0, 3.0], // 2: front 0 (best first objective)
        vec![1.0, 1.0, 1.0], // 3: equal to 0, neither dominates: front 0
        vec![1.0, 3.0, 3.0], // 4: dominated by 0 and 2 -> front 1
        vec![1.5, 1.5, 1.0], // 5: dominated by 0 only -> front 1
    ];
    assert_eq!(
        non_dominated_sort(&p),
        vec![vec![0, 2, 3], vec![4, 5], vec![1]]
    );
}

// ---------------------------------------------------------------------------------------------------
// ParEGO
// ---------------------------------------------------------------------------------------------------

#[test]
fn parego_never_prefers_a_dominated_point() {
    // For any positive weights, the augmentation term makes a dominated point scalarise strictly worse.
    let a = [1.0, 5.0];
    let b = [2.0, 6.0]; // dominated by a
    let c = [4.0, 1.0];
    let costs = [Some(&a[..]), Some(&b[..]), Some(&c[..]), None];
    let n = parego::normalise(&costs, 2);
    // Hand-checked normalisation: f1 in [1, 4], f2 in [1, 6]; the failure gets the crash cost.
    assert_eq!(n[1], vec![1.0 / 3.0, 1.0]);
    assert_eq!(n[3], vec![1.0, 1.0]);
    for w in [0.01, 0.25, 0.5, 0.75, 0.99] {
        let theta = [w, 1.0 - w];
        let s: Vec<f64> = n.iter().map(|x| parego::scalarise(&theta, x)).collect();
        assert!(s[0] < s[1], "w={w}: {s:?}");
        // The crash cost is never better than a success.
        assert!(s.iter().take(3).all(|&x| x <= s[3]), "w={w}: {s:?}");
    }
    // Weight on f1 alone picks the f1-best point; on f2 alone the f2-best.
    let pick = |theta: [f64; 2]| {
        (0..3)
            .min_by(|&i, &j| {
                parego::scalarise(&theta, &n[i]).total_cmp(&parego::scalarise(&theta, &n[j]))
            })
            .unwrap()
    };
    assert_eq!(pick([1.0, 0.0]), 0);
    assert_eq!(pick([0.0, 1.0]), 2);
}

// ---------------------------------------------------------------------------------------------------
// Ask / tell
// ---------------------------------------------------------------------------------------------------

fn mixed_space() -> SearchSpace {
    SearchSpace::new(
        vec![
            ParamSpec::float("lr", 1e-4, 1.0, 0.01).log(),
            ParamSpec::int("width", 8, 256, 32),
            ParamSpec::categorical("opt", &["sgd", "adam", "rmsprop"], "sgd"),
            ParamSpec::float("momentum", 0.0, 0.99, 0.9),
        ],
        None,
    )
    .unwrap()
}

/// A smooth two-objective function of the mixed space, lower is better; `budget` scales the first.
fn mixed_objectives(trial: &Trial) -> Vec<f64> {
    let lr = trial.config.f64("lr").unwrap();
    let width = trial.config.f64("width").unwrap();
    let m = trial.config.f64("momentum").unwrap();
    let loss = (lr.log10() + 2.0).powi(2) + (m - 0.5).powi(2) + 1.0 / trial.budget;
    vec![loss, width / 256.0]
}

fn run_sequential(seed: u64, trials: usize) -> Vec<Trial> {
    let settings = SmboSettings::new(2, trials, Budgets::single(1.0), seed);
    let mut opt = Smbo::new(mixed_space(), settings).unwrap();
    let mut out = Vec::new();
    while let Ask::Trial(t) = opt.ask() {
        opt.tell(
            t.id,
            Outcome::Success {
                objectives: mixed_objectives(&t),
            },
        )
        .unwrap();
        out.push(t);
    }
    out
}

/// A copy that adopts another copy's decisions (as a worker replaying the study's log does)
/// without proposing them ends in the same state: the asks after that are the same, model phase,
/// promotions and pending trials included.
#[test]
fn an_adopting_copy_asks_what_the_deciding_copy_asks() {
    adopting_copy_asks_what_the_decider_asks(Schedule::Asha);
    adopting_copy_asks_what_the_decider_asks(Schedule::Adaptive);
}

fn adopting_copy_asks_what_the_decider_asks(schedule: Schedule) {
    let budgets = Budgets {
        min: 1.0,
        max: 9.0,
        eta: 3.0,
        schedule,
        integer: true,
    };
    let settings = SmboSettings {
        initial_design: Some(6),
        ..SmboSettings::new(2, 60, budgets, 3)
    };
    let mut decider = Smbo::new(mixed_space(), settings.clone()).unwrap();
    let mut copy = Smbo::new(mixed_space(), settings).unwrap();
    let mut pending: Vec<Trial> = Vec::new();
    let mut adopted = 0;
    for step in 0..50 {
        let Ask::Trial(t) = decider.ask() else {
            panic!("step {step}: the decider stopped early");
        };
        let state = decider.ask_state(t.id).unwrap();
        assert!(copy.adopt(&t, &state), "step {step}: {t:?} not adopted");
        adopted += 1;
        pending.push(t);
        // Two trials stay running: results arrive out of order.
        if pending.len() > 2 {
            let done = pending.remove(step % 3);
            let outcome = Outcome::Success {
                objectives: mixed_objectives(&done),
            };
            decider.tell(done.id, outcome.clone()).unwrap();
            copy.tell(done.id, outcome).unwrap();
        }
    }
    assert_eq!(adopted, 50);
    assert_eq!(copy.records(), decider.records());
    for _ in 0..5 {
        assert_eq!(copy.ask(), decider.ask());
    }
    // A decision that is not this optimizer's (another budget) is not adopted.
    let Ask::Trial(mut t) = decider.ask() else {
        panic!("no trial")
    };
    let state = decider.ask_state(t.id).unwrap();
    t.budget += 1.0;
    assert!(!copy.adopt(&t, &state));
}

#[test]
fn same_seed_same_suggestions_other_seed_others() {
    // 45 trials: past the 40-point initial design, so model-based proposals are compared too.
    let a = run_sequential(7, 45);
    let b = run_sequential(7, 45);
    let c = run_sequential(8, 45);
    assert_eq!(a.len(), 45);
    assert_eq!(a, b);
    // Both start from the default configuration, then differ.
    assert_eq!(a[0].config, c[0].config);
    assert_ne!(a[1..], c[1..]);
}

#[test]
fn pending_trials_never_share_a_configuration() {
    let space = mixed_space();
    let mut settings = SmboSettings::new(2, 60, Budgets::single(1.0), 3);
    settings.initial_design = Some(5);
    let mut opt = Smbo::new(space.clone(), settings).unwrap();
    let mut pending: Vec<Trial> = Vec::new();
    let mut seen = HashSet::new();
    let mut told = 0;
    loop {
        // Keep 4 trials in flight; tell the oldest when full.
        while pending.len() < 4 {
            match opt.ask() {
                Ask::Trial(t) => {
                    let key = SearchSpace::key(&space.to_vector(&t.config).unwrap());
                    assert!(seen.insert(key), "trial {} repeats a configuration", t.id);
                    pending.push(t);
                }
                Ask::Wait => break,
                Ask::Done => break,
            }
        }
        if pending.is_empty() {
            break;
        }
        let t = pending.remove(0);
        opt.tell(
            t.id,
            Outcome::Success {
                objectives: mixed_objectives(&t),
            },
        )
        .unwrap();
        told += 1;
    }
    assert_eq!(told, 60);
    assert_eq!(opt.pending(), 0);
    assert_eq!(opt.ask(), Ask::Done);
}

#[test]
fn tell_rejects_unknown_repeated_and_malformed_results() {
    let settings = SmboSettings::new(2, 10, Budgets::single(1.0), 0);
    let mut opt = Smbo::new(mixed_space(), settings).unwrap();
    let Ask::Trial(t) = opt.ask() else {
        panic!("expected a trial");
    };
    assert_eq!(
        opt.tell(
            t.id,
            Outcome::Success {
                objectives: vec![1.0]
            }
        ),
        Err(TellError::WrongObjectiveCount {
            id: t.id,
            expected: 2,
            got: 1
        })
    );
    assert_eq!(
        opt.tell(99, Outcome::Success { objectives: vec![] }),
        Err(TellError::UnknownTrial(99))
    );
    // A NaN objective becomes a failure naming it instead of poisoning the model.
    opt.tell(
        t.id,
        Outcome::Success {
            objectives: vec![f64::NAN, 1.0],
        },
    )
    .unwrap();
    match &opt.records()[0].outcome {
        Some(Outcome::Failed { reason }) => assert!(reason.contains("objective 0"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        opt.tell(
            t.id,
            Outcome::Failed {
                reason: "again".into()
            }
        ),
        Err(TellError::AlreadyTold(t.id))
    );
}

#[test]
fn a_small_discrete_space_is_used_up_without_repeats() {
    let space = SearchSpace::new(
        vec![
            ParamSpec::int("k", 1, 3, 2),
            ParamSpec::categorical("c", &["a", "b"], "a"),
        ],
        None,
    )
    .unwrap();
    let settings = SmboSettings::new(1, 50, Budgets::single(1.0), 1);
    let mut opt = Smbo::new(space.clone(), settings).unwrap();
    let mut trials = Vec::new();
    loop {
        match opt.ask() {
            Ask::Trial(t) => trials.push(t),
            Ask::Wait => break,
            Ask::Done => panic!("done while trials are pending"),
        }
    }
    // 3 x 2 = 6 configurations, all different; the 7th ask waits on the pending ones.
    assert_eq!(trials.len(), 6);
    let keys: HashSet<_> = trials
        .iter()
        .map(|t| SearchSpace::key(&space.to_vector(&t.config).unwrap()))
        .collect();
    assert_eq!(keys.len(), 6);
    for t in &trials {
        opt.tell(
            t.id,
            Outcome::Success {
                objectives: vec![t.config.f64("k").unwrap()],
            },
        )
        .unwrap();
    }
    assert_eq!(opt.ask(), Ask::Done);
}

#[test]
fn initial_design_is_the_default_then_space_filling() {
    let space = SearchSpace::new(
        vec![
            ParamSpec::float("a", 0.0, 1.0, 0.3),
            ParamSpec::float("b", 1e-3, 1e1, 1e-2).log(),
        ],
        None,
    )
    .unwrap();
    let settings = SmboSettings::new(1, 100, Budgets::single(1.0), 5);
    let mut opt = Smbo::new(space.clone(), settings).unwrap();
    let mut trials = Vec::new();
    for _ in 0..17 {
        let Ask::Trial(t) = opt.ask() else {
            panic!("expected a trial")
        };
        trials.push(t);
    }
    assert_eq!(trials[0].config, space.default_config());
    // The next 16 are the first 16 scrambled Sobol points: one in each cell of a 4 x 4 grid over the
    // unit cube, which for the log parameter means one per decade-and-a-third in log space.
    let mut grid = [[0usize; 4]; 4];
    for t in &trials[1..] {
        let a = t.config.f64("a").unwrap();
        let b = (t.config.f64("b").unwrap().log10() + 3.0) / 4.0;
        grid[(a * 4.0) as usize][(b * 4.0).min(3.999) as usize] += 1;
    }
    assert!(grid.iter().flatten().all(|&c| c == 1), "{grid:?}");
}

#[test]
fn hyperband_through_ask_tell_promotes_with_continuation() {
    // Budgets 1..27, eta 3: the first bracket runs 27 configurations at 1 epoch, promotes 9 to 3,
    // 3 to 9 and 1 to 27, each promotion continuing the trial it was promoted from.
    let settings = SmboSettings::new(2, 40, Budgets::epochs(1, 27, 3), 11);
    let mut opt = Smbo::new(mixed_space(), settings).unwrap();
    let mut trials = Vec::new();
    while let Ask::Trial(t) = opt.ask() {
        let objectives = mixed_objectives(&t);
        opt.tell(t.id, Outcome::Success { objectives }).unwrap();
        trials.push(t);
    }
    let at = |b: u32| trials.iter().filter(|t| t.epochs() == b).count();
    assert_eq!([at(1), at(3), at(9), at(27)], [27, 9, 3, 1]);
    for t in &trials {
        match t.continues {
            None => assert_eq!(t.epochs(), 1, "trial {} starts above the lowest rung", t.id),
            Some(from) => {
                let parent = &trials[from as usize];
                assert_eq!(parent.config, t.config);
                assert_eq!(t.budget, parent.budget * 3.0);
            }
        }
    }
    // Promotions pick the non-dominated: the single trial at 27 epochs is on the first front of
    // the 3 trials at 9.
    let objectives = |t: &Trial| match &opt.records()[t.id as usize].outcome {
        Some(Outcome::Success { objectives }) => objectives.clone(),
        other => panic!("{other:?}"),
    };
    let top = trials.iter().find(|t| t.epochs() == 27).unwrap();
    let parent = objectives(&trials[top.continues.unwrap() as usize]);
    for t in trials.iter().filter(|t| t.epochs() == 9) {
        assert!(!dominates(&objectives(t), &parent));
    }
}

#[test]
fn the_model_learns_from_every_budget_under_asha() {
    // A bowl at (0.8, 0.2) whose values do not depend on the budget, under ASHA (1-9 epochs,
    // 60 trials). Learning from one budget, the forest sees the handful of trials at the
    // highest budget that has 8 (the promoted ones); from every budget it also sees the 40-odd
    // at one epoch, so its proposals after the initial design land nearer the bottom (measured
    // over these 24 seeds: 0.75 of the distance; 8-seed slices 0.61 to 0.90).
    use dsnn_hpo::opt::ModelData;
    let space = SearchSpace::new(
        vec![
            ParamSpec::float("a", 0.0, 1.0, 0.5),
            ParamSpec::float("b", 0.0, 1.0, 0.5),
        ],
        None,
    )
    .unwrap();
    let mean_distance = |model_data: ModelData| -> f64 {
        let mut distances = Vec::new();
        for seed in 0..24 {
            let budgets = Budgets {
                schedule: Schedule::Asha,
                ..Budgets::epochs(1, 9, 3)
            };
            let mut settings = SmboSettings::new(2, 60, budgets, seed);
            settings.model_data = model_data;
            settings.random_fraction = 0.0;
            settings.front_fraction = 0.0;
            let mut opt = Smbo::new(space.clone(), settings).unwrap();
            let mut new_configs = 0;
            while let Ask::Trial(t) = opt.ask() {
                let (a, b) = (t.config.f64("a").unwrap(), t.config.f64("b").unwrap());
                let d = ((a - 0.8).powi(2) + (b - 0.2).powi(2)).sqrt();
                if t.continues.is_none() {
                    new_configs += 1;
                    // Past the initial design (SMAC's rule: 15 of 60 trials).
                    if new_configs > 15 {
                        distances.push(d);
                    }
                }
                let f = d * d + 0.01;
                opt.tell(
                    t.id,
                    Outcome::Success {
                        objectives: vec![f, f],
                    },
                )
                .unwrap();
            }
        }
        distances.iter().sum::<f64>() / distances.len() as f64
    };
    let (one, all) = (
        mean_distance(ModelData::OneBudget),
        mean_distance(ModelData::AllBudgets),
    );
    assert!(
        all < 0.9 * one,
        "every budget {all:.4}, one budget {one:.4}"
    );
}

#[test]
fn multi_fidelity_with_parallel_workers_and_failures_never_stalls() {
    parallel_workers_and_failures_never_stall(Schedule::Hyperband);
    parallel_workers_and_failures_never_stall(Schedule::Adaptive);
}

fn parallel_workers_and_failures_never_stall(schedule: Schedule) {
    // Tell out of order, fail every 5th trial: the run must still finish all its trials, and every
    // promotion must continue a successful trial of the same configuration.
    let budgets = Budgets {
        schedule,
        ..Budgets::epochs(10, 50, 3)
    };
    let mut settings = SmboSettings::new(2, 120, budgets, 2);
    settings.initial_design = Some(6);
    let mut opt = Smbo::new(mixed_space(), settings).unwrap();
    let mut pending: Vec<Trial> = Vec::new();
    let mut all: Vec<Trial> = Vec::new();
    let mut step = 0usize;
    loop {
        while pending.len() < 3 {
            match opt.ask() {
                Ask::Trial(t) => {
                    if let Some(from) = t.continues {
                        let parent = &opt.records()[from as usize];
                        assert_eq!(parent.trial.config, t.config);
                        assert!(parent.trial.budget < t.budget);
                        assert!(matches!(parent.outcome, Some(Outcome::Success { .. })));
                    }
                    all.push(t.clone());
                    pending.push(t);
                }
                Ask::Wait | Ask::Done => break,
            }
        }
        if pending.is_empty() {
            break;
        }
        step += 1;
        let t = pending.remove(step % pending.len());
        let outcome = if t.id % 5 == 4 {
            Outcome::Failed {
                reason: "diverged".into(),
            }
        } else {
            Outcome::Success {
                objectives: mixed_objectives(&t),
            }
        };
        opt.tell(t.id, outcome).unwrap();
    }
    assert_eq!(all.len(), 120);
    // Budgets 10..50, eta 3: the rungs are 17 and 50 epochs.
    assert!(all.iter().all(|t| t.epochs() == 17 || t.epochs() == 50));
    assert!(all.iter().any(|t| t.continues.is_some()));
    // The front is taken at the highest budget with a success.
    let front = opt.pareto_front();
    assert!(!front.is_empty());
    assert!(front.iter().all(|r| r.trial.epochs() == 50));
}

// ---------------------------------------------------------------------------------------------------
// Command objective
// ---------------------------------------------------------------------------------------------------

#[cfg(unix)]
mod command {
    use super::*;
    use dsnn_hpo::eval::command::CommandObjective;
    use dsnn_hpo::space::Config;

    fn trial() -> Trial {
        let mut config = Config::new();
        config.insert("lr", 0.5);
        config.insert("opt", "adam");
        Trial {
            id: 4,
            config,
            budget: 9.0,
            continues: Some(1),
        }
    }

    fn objective(script: &str, timeout_ms: u64) -> CommandObjective {
        CommandObjective::shell(script, vec!["loss".into(), "energy".into()])
            .unwrap()
            .with_timeout(Duration::from_millis(timeout_ms))
    }

    #[test]
    fn a_succeeding_script_reads_the_trial_and_returns_its_objectives() {
        let dir = tempfile::tempdir().unwrap();
        let mut obj = objective(
            "read -r line; printf '%s' \"$line\" > payload.json; \
             echo 'log line'; echo '{\"energy\": 2.5, \"loss\": 0.125, \"extra\": \"x\"}'",
            5000,
        )
        .with_workdir(dir.path());
        assert_eq!(
            obj.evaluate(&trial()).unwrap(),
            Outcome::Success {
                objectives: vec![0.125, 2.5]
            }
        );
        let payload: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("payload.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(payload["config"]["lr"], 0.5);
        assert_eq!(payload["config"]["opt"], "adam");
        assert_eq!(payload["budget"], 9);
        assert_eq!(payload["trial_id"], 4);
        assert_eq!(payload["continues"], 1);
    }

    fn failure(outcome: Outcome) -> String {
        match outcome {
            Outcome::Failed { reason } => reason,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn a_failing_script_is_a_failed_trial_with_its_stderr_tail() {
        let mut obj = objective(
            "cat > /dev/null; i=0; while [ $i -lt 600 ]; do echo \"noise $i\" >&2; i=$((i+1)); done; \
             echo 'CUDA out of memory' >&2; exit 3",
            5000,
        );
        let reason = failure(obj.evaluate(&trial()).unwrap());
        assert!(reason.contains("status 3"), "{reason}");
        assert!(reason.contains("CUDA out of memory"), "{reason}");
        // Only the tail of a long stderr is kept.
        assert!(!reason.contains("noise 0\n"), "{reason}");
        assert!(reason.len() < 2300, "{}", reason.len());
    }

    #[test]
    fn a_hanging_script_is_killed_at_its_timeout() {
        let mut obj = objective(
            "echo 'started' >&2; sleep 30; echo '{\"loss\":1,\"energy\":1}'",
            300,
        );
        let start = Instant::now();
        let reason = failure(obj.evaluate(&trial()).unwrap());
        let took = start.elapsed();
        assert!(reason.contains("timed out"), "{reason}");
        assert!(reason.contains("started"), "{reason}");
        // The timeout, not the 30 s sleep (with slack for the pipe grace period on a busy machine).
        assert!(took < Duration::from_secs(10), "{took:?}");
    }

    #[test]
    fn garbage_or_incomplete_output_is_a_failed_trial() {
        let mut obj = objective("echo 'this is not json'; echo oops >&2", 5000);
        let reason = failure(obj.evaluate(&trial()).unwrap());
        assert!(reason.contains("not a JSON object"), "{reason}");
        assert!(reason.contains("oops"), "{reason}");
        let mut obj = objective("echo '{\"loss\": 0.3}'", 5000);
        let reason = failure(obj.evaluate(&trial()).unwrap());
        assert!(reason.contains("no objective \"energy\""), "{reason}");
        let mut obj = objective("echo '{\"loss\": \"low\", \"energy\": 1}'", 5000);
        let reason = failure(obj.evaluate(&trial()).unwrap());
        assert!(reason.contains("\"loss\""), "{reason}");
    }

    #[test]
    fn a_missing_program_is_an_error_not_a_failed_trial() {
        let mut obj = CommandObjective::new(
            vec!["/nonexistent/dsnn-hpo-objective".into()],
            vec!["loss".into()],
        )
        .unwrap();
        assert!(obj.evaluate(&trial()).is_err());
    }
}

// ---------------------------------------------------------------------------------------------------
// Benchmark problems
// ---------------------------------------------------------------------------------------------------

#[test]
fn parego_beats_random_search_on_zdt1() {
    // Same number of evaluations, same seeds: the model must pay for itself.
    use dsnn_hpo::commands::bench::{OptimizerChoice, run_one};
    let total = |opt| -> f64 {
        (0..3)
            .map(|seed| run_one(Problem::Zdt1, opt, 60, seed).unwrap().hypervolume)
            .sum()
    };
    let parego = total(OptimizerChoice::Parego);
    let random = total(OptimizerChoice::Random);
    assert!(parego > random, "parego {parego} vs random {random}");
}

// ---------------------------------------------------------------------------------------------------
// Constraints
// ---------------------------------------------------------------------------------------------------

mod constraints {
    use super::*;
    use dsnn_hpo::opt::{KnownConstraint, Strategy};
    use dsnn_hpo::space::{Config, Value};
    use rand::SeedableRng;
    use std::sync::Arc;

    /// Float, int, log, categorical and a conditional parameter; the default (width 200 x depth 4) breaks
    /// [`budget_constraint`].
    fn constrained_space() -> SearchSpace {
        SearchSpace::new(
            vec![
                ParamSpec::float("lr", 1e-4, 1.0, 0.01).log(),
                ParamSpec::int("width", 8, 256, 200),
                ParamSpec::int("depth", 1, 4, 4),
                ParamSpec::categorical("opt", &["sgd", "adam", "rmsprop"], "sgd"),
                ParamSpec::float("momentum", 0.0, 0.99, 0.9).active_if("opt", &["sgd".into()]),
                ParamSpec::float("dropout", 0.0, 0.5, 0.1),
            ],
            None,
        )
        .unwrap()
    }

    /// A weight-budget-like predicate that rejects about half of the space.
    fn budget_ok(c: &Config) -> bool {
        let width = c.f64("width").unwrap();
        let depth = c.f64("depth").unwrap();
        let lr = c.f64("lr").unwrap();
        let slow_sgd = c.str("opt") == Some("sgd") && c.f64("momentum").unwrap() < 0.3;
        width * depth <= 400.0 && lr <= 0.1 && !slow_sgd
    }

    fn budget_constraint() -> KnownConstraint {
        Arc::new(budget_ok)
    }

    /// Two cheap objectives of the constrained space.
    fn objectives(t: &Trial) -> Vec<f64> {
        let lr = t.config.f64("lr").unwrap();
        let width = t.config.f64("width").unwrap();
        let depth = t.config.f64("depth").unwrap();
        let dropout = t.config.f64("dropout").unwrap();
        let loss = (lr.log10() + 2.5).powi(2) + (dropout - 0.2).powi(2) + 2.0 / (depth * t.budget);
        vec![loss, width * depth / 1024.0]
    }

    /// Success, with every 7th trial failing and high dropout breaking a measured constraint.
    fn outcome(t: &Trial) -> Outcome {
        if t.id % 7 == 3 {
            Outcome::Failed {
                reason: "diverged".into(),
            }
        } else if t.config.f64("dropout").unwrap() > 0.35 {
            Outcome::Infeasible {
                objectives: objectives(t),
                violated: vec!["accuracy >= 0.8".into()],
            }
        } else {
            Outcome::Success {
                objectives: objectives(t),
            }
        }
    }

    /// Small model and maximiser: the test profile builds this crate unoptimised.
    fn small_settings(max_trials: usize, budgets: Budgets, seed: u64) -> SmboSettings {
        let mut s = SmboSettings::new(2, max_trials, budgets, seed);
        s.forest.n_trees = 3;
        s.maximizer.n_random = 40;
        s.maximizer.n_local_starts = 2;
        s.maximizer.max_local_steps = 5;
        s.maximizer.plateau_steps = 2;
        s
    }

    /// One run of `max_trials` asks with `workers` trials in flight, told in order; the trials asked.
    fn constrained_run(seed: u64, max_trials: usize) -> (Vec<Trial>, Strategy) {
        let strategy = if seed % 4 < 2 {
            Strategy::ParEgo
        } else {
            Strategy::Random
        };
        let budgets = if seed.is_multiple_of(2) {
            Budgets::single(1.0)
        } else {
            Budgets::epochs(1, 9, 3)
        };
        let mut settings = small_settings(max_trials, budgets, seed);
        settings.strategy = strategy;
        let mut opt = Smbo::new(constrained_space(), settings)
            .unwrap()
            .with_known_constraint(budget_constraint());
        let workers = 1 + (seed / 4 % 3) as usize;
        let mut pending: Vec<Trial> = Vec::new();
        let mut all = Vec::new();
        loop {
            while pending.len() < workers {
                match opt.ask() {
                    Ask::Trial(t) => {
                        all.push(t.clone());
                        pending.push(t);
                    }
                    Ask::Wait | Ask::Done => break,
                }
            }
            if pending.is_empty() {
                break;
            }
            let t = pending.remove(0);
            opt.tell(t.id, outcome(&t)).unwrap();
        }
        (all, strategy)
    }

    #[test]
    fn known_constraint_is_never_broken_in_10000_asks() {
        let space = constrained_space();
        assert!(!budget_ok(&space.default_config()));
        // The constraint rejects a substantial part of the space.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let rejected = (0..4000)
            .filter(|_| !budget_ok(&space.sample(&mut rng)))
            .count() as f64
            / 4000.0;
        assert!((0.4..0.7).contains(&rejected), "rejected share {rejected}");

        let start = Instant::now();
        let (mut asks, mut new, mut violations, mut infeasible_told) = (0, 0, 0, 0);
        for seed in 0..100 {
            let (trials, strategy) = constrained_run(seed, 100);
            assert_eq!(trials.len(), 100, "seed {seed} stopped early");
            asks += trials.len();
            if strategy == Strategy::ParEgo {
                assert_eq!(trials[0].config, space.default_config(), "seed {seed}");
            }
            let mut keys = HashSet::new();
            for t in trials.iter().filter(|t| t.continues.is_none()) {
                new += 1;
                assert!(keys.insert(SearchSpace::key(&space.to_vector(&t.config).unwrap())));
                let is_default = strategy == Strategy::ParEgo && t.id == 0;
                if !is_default && !budget_ok(&t.config) {
                    violations += 1;
                }
            }
            infeasible_told += trials
                .iter()
                .filter(|t| t.id % 7 != 3 && t.config.f64("dropout").unwrap() > 0.35)
                .count();
        }
        eprintln!(
            "{asks} asks ({new} new, {infeasible_told} told infeasible) in {:?}",
            start.elapsed()
        );
        assert_eq!(asks, 10_000);
        assert!(infeasible_told > 100, "{infeasible_told}");
        assert_eq!(violations, 0);
    }

    #[test]
    fn same_seed_same_asks_with_constraints() {
        for seed in [0, 1] {
            let (a, _) = constrained_run(seed, 80);
            let (b, _) = constrained_run(seed, 80);
            assert_eq!(a, b);
        }
        let (a, _) = constrained_run(0, 80);
        let (c, _) = constrained_run(4, 80);
        assert_ne!(a[1..], c[1..]);
    }

    #[test]
    fn a_mostly_infeasible_space_still_yields_feasible_points() {
        // 95% of the space is infeasible: random proposal must still find the rest, every time.
        let space = SearchSpace::new(
            vec![
                ParamSpec::float("a", 0.0, 1.0, 0.5),
                ParamSpec::float("b", 0.0, 1.0, 0.5),
            ],
            None,
        )
        .unwrap();
        let ok = |c: &Config| c.f64("a").unwrap() < 0.05;
        for strategy in [Strategy::Random, Strategy::ParEgo] {
            let mut settings = small_settings(60, Budgets::single(1.0), 3);
            settings.n_objectives = 1;
            settings.strategy = strategy;
            let mut opt = Smbo::new(space.clone(), settings)
                .unwrap()
                .with_known_constraint(Arc::new(ok));
            let mut n = 0;
            while let Ask::Trial(t) = opt.ask() {
                assert!(t.id == 0 && strategy == Strategy::ParEgo || ok(&t.config));
                let a = t.config.f64("a").unwrap();
                opt.tell(
                    t.id,
                    Outcome::Success {
                        objectives: vec![a],
                    },
                )
                .unwrap();
                n += 1;
            }
            assert_eq!(n, 60, "{strategy:?}");
        }
    }

    #[test]
    fn a_space_with_nothing_feasible_left_ends_like_exhaustion() {
        let space = SearchSpace::new(
            vec![
                ParamSpec::int("k", 1, 4, 1),
                ParamSpec::categorical("c", &["a", "b"], "a"),
            ],
            None,
        )
        .unwrap();
        // 2 of 8 configurations are feasible; the default (1, a) is not.
        let ok = |c: &Config| c.i64("k") == Some(3);
        let mut opt = Smbo::new(
            space.clone(),
            SmboSettings::new(1, 50, Budgets::single(1.0), 1),
        )
        .unwrap()
        .with_known_constraint(Arc::new(ok));
        let mut trials = Vec::new();
        loop {
            match opt.ask() {
                Ask::Trial(t) => trials.push(t),
                Ask::Wait => break,
                Ask::Done => panic!("done while trials are pending"),
            }
        }
        assert_eq!(trials[0].config, space.default_config());
        assert_eq!(trials.len(), 3);
        assert!(trials[1..].iter().all(|t| ok(&t.config)));
        for t in &trials {
            opt.tell(
                t.id,
                Outcome::Success {
                    objectives: vec![1.0],
                },
            )
            .unwrap();
        }
        assert_eq!(opt.ask(), Ask::Done);

        // Nothing feasible at all: random search ends at once, never loops.
        let never: KnownConstraint = Arc::new(|_: &Config| false);
        let mut opt = Smbo::random_search(space, SmboSettings::new(1, 50, Budgets::single(1.0), 1))
            .unwrap()
            .with_known_constraint(never);
        assert_eq!(opt.ask(), Ask::Done);
    }

    #[test]
    fn infeasible_trials_never_reach_the_pareto_front() {
        let space = SearchSpace::new(vec![ParamSpec::float("x", 0.0, 1.0, 0.5)], None).unwrap();
        let mut settings = SmboSettings::new(2, 30, Budgets::single(1.0), 4);
        settings.initial_design = Some(10);
        let mut opt = Smbo::new(space, settings).unwrap();
        let mut infeasible = HashSet::new();
        while let Ask::Trial(t) = opt.ask() {
            let x = t.config.f64("x").unwrap();
            // A convex front over x; the infeasible half is shifted far below it, dominating everything.
            let objectives = vec![x, (1.0 - x).powi(2)];
            let outcome = if t.id % 2 == 0 {
                infeasible.insert(t.id);
                Outcome::Infeasible {
                    objectives: objectives.iter().map(|v| v - 10.0).collect(),
                    violated: vec!["latency".into()],
                }
            } else {
                Outcome::Success { objectives }
            };
            opt.tell(t.id, outcome).unwrap();
        }
        let front = opt.pareto_front();
        assert!(front.len() >= 2);
        for r in &front {
            assert!(!infeasible.contains(&r.trial.id), "trial {}", r.trial.id);
            assert!(matches!(r.outcome, Some(Outcome::Success { .. })));
        }
        // It is the front of the feasible successes alone.
        let feasible: Vec<Vec<f64>> = opt
            .records()
            .iter()
            .filter_map(|r| match &r.outcome {
                Some(Outcome::Success { objectives }) => Some(objectives.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(front.len(), non_dominated_sort(&feasible)[0].len());
    }

    #[test]
    fn feasible_trials_are_promoted_first_even_when_dominated() {
        // Budgets 1..9, eta 3: 9 configurations at 1 epoch, 3 promoted to 3 epochs.
        let settings = SmboSettings::new(2, 12, Budgets::epochs(1, 9, 3), 6);
        let mut opt = Smbo::random_search(mixed_space(), settings).unwrap();
        let mut first = Vec::new();
        for _ in 0..9 {
            let Ask::Trial(t) = opt.ask() else {
                panic!("expected a trial")
            };
            assert_eq!(t.epochs(), 1);
            first.push(t);
        }
        // Trials 2 and 5 are feasible and dominated by every infeasible one; 0 fails.
        for t in &first {
            let i = t.id as f64;
            let outcome = match t.id {
                0 => Outcome::Failed {
                    reason: "oom".into(),
                },
                2 | 5 => Outcome::Success {
                    objectives: vec![10.0 + i, 10.0 + i],
                },
                // The infeasible ones: one front (i, 8 - i), trials 1 and 8 are its extremes.
                _ => Outcome::Infeasible {
                    objectives: vec![i, 8.0 - i],
                    violated: vec!["accuracy".into()],
                },
            };
            opt.tell(t.id, outcome).unwrap();
        }
        let mut promoted = Vec::new();
        for _ in 0..3 {
            let Ask::Trial(t) = opt.ask() else {
                panic!("expected a promotion")
            };
            assert_eq!(t.epochs(), 3);
            promoted.push(t.continues.unwrap());
        }
        // Both feasible ones first, then the best-spread infeasible one (an extreme of its front).
        assert_eq!(promoted[..2], [2, 5]);
        assert!(promoted[2] == 1 || promoted[2] == 8, "{promoted:?}");
    }

    #[test]
    fn infeasible_outcome_round_trips_through_json() {
        let o = Outcome::Infeasible {
            objectives: vec![0.25, 3.0],
            violated: vec!["accuracy >= 0.8".into(), "latency <= 2 ms".into()],
        };
        let text = serde_json::to_string(&o).unwrap();
        assert_eq!(
            text,
            r#"{"status":"infeasible","objectives":[0.25,3.0],"violated":["accuracy >= 0.8","latency <= 2 ms"]}"#
        );
        assert_eq!(serde_json::from_str::<Outcome>(&text).unwrap(), o);
        assert_eq!(o.objectives(), Some(&[0.25, 3.0][..]));
        assert!(!o.is_feasible_success());
    }

    #[test]
    fn tell_checks_infeasible_outcomes_like_successes() {
        let settings = SmboSettings::new(2, 10, Budgets::single(1.0), 0);
        let mut opt = Smbo::new(mixed_space(), settings).unwrap();
        let Ask::Trial(t) = opt.ask() else {
            panic!("expected a trial");
        };
        let infeasible = |objectives: Vec<f64>| Outcome::Infeasible {
            objectives,
            violated: vec!["c".into()],
        };
        assert_eq!(
            opt.tell(t.id, infeasible(vec![1.0])),
            Err(TellError::WrongObjectiveCount {
                id: t.id,
                expected: 2,
                got: 1
            })
        );
        opt.tell(t.id, infeasible(vec![1.0, f64::INFINITY]))
            .unwrap();
        match &opt.records()[0].outcome {
            Some(Outcome::Failed { reason }) => assert!(reason.contains("objective 1"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    /// Share of model-phase proposals with x0 > 0.5 over several seeds, where x0 > 0.5 is infeasible
    /// (told as such when `measured`, as plain successes otherwise) and the optimum lies just inside it.
    fn infeasible_share(measured: bool) -> f64 {
        let space = SearchSpace::new(
            vec![
                ParamSpec::float("x0", 0.0, 1.0, 0.25),
                ParamSpec::float("x1", 0.0, 1.0, 0.25),
            ],
            None,
        )
        .unwrap();
        let (mut model, mut over) = (0, 0);
        for seed in 0..4 {
            let mut settings = SmboSettings::new(1, 50, Budgets::single(1.0), seed);
            settings.initial_design = Some(12);
            settings.random_fraction = 0.0;
            settings.front_fraction = 0.0;
            settings.forest.n_trees = 5;
            settings.maximizer.n_random = 100;
            settings.maximizer.n_local_starts = 3;
            let mut opt = Smbo::new(space.clone(), settings).unwrap();
            while let Ask::Trial(t) = opt.ask() {
                let x0 = t.config.f64("x0").unwrap();
                let x1 = t.config.f64("x1").unwrap();
                let objectives = vec![(x0 - 0.65).powi(2) + (x1 - 0.5).powi(2)];
                if t.id >= 12 {
                    model += 1;
                    over += usize::from(x0 > 0.5);
                }
                let outcome = if measured && x0 > 0.5 {
                    Outcome::Infeasible {
                        objectives,
                        violated: vec!["x0 <= 0.5".into()],
                    }
                } else {
                    Outcome::Success { objectives }
                };
                opt.tell(t.id, outcome).unwrap();
            }
        }
        over as f64 / model as f64
    }

    #[test]
    fn the_feasibility_model_steers_away_from_infeasible_regions() {
        let with = infeasible_share(true);
        let without = infeasible_share(false);
        eprintln!(
            "share of model proposals with x0 > 0.5: {with:.3} with feasibility, {without:.3} without"
        );
        assert!(without > 0.5, "without feasibility information: {without}");
        assert!(with < 0.3, "with feasibility information: {with}");
    }

    #[test]
    fn known_feasible_reports_the_constraint() {
        let opt = Smbo::new(
            constrained_space(),
            SmboSettings::new(2, 10, Budgets::single(1.0), 0),
        )
        .unwrap();
        let default = constrained_space().default_config();
        assert!(opt.known_feasible(&default));
        let opt = opt.with_known_constraint(budget_constraint());
        assert!(!opt.known_feasible(&default));
        let mut small = default.clone();
        small.insert("width", Value::Int(16));
        assert!(opt.known_feasible(&small));
        // The wrapper prints without exposing the closure.
        assert!(format!("{opt:?}").contains("<known constraint>"));
    }
}
