//! The optimizer through a study store: one worker decides exactly what the bare optimizer
//! decides, and the decisions of many workers (finishing out of order) replay exactly.

#![cfg(feature = "dsnn")]

use dsnn_hpo::eval::problems::{N_VARS, Problem};
use dsnn_hpo::opt::{Ask, Budgets, Outcome, Schedule, Smbo, SmboSettings, Trial};
use dsnn_hpo::search::replica::Replica;
use dsnn_hpo::store::memory::MemoryStore;
use dsnn_hpo::store::{
    Claim, Lease, LeaseSettings, NewStudy, Owner, RunInfo, Store, TrialLine, finished_lines,
};

fn smbo(schedule: Schedule, trials: usize) -> Smbo {
    let budgets = Budgets {
        min: 1.0,
        max: 9.0,
        eta: 3.0,
        schedule,
        integer: true,
    };
    Smbo::new(
        Problem::Zdt1.space(),
        SmboSettings::new(2, trials, budgets, 11),
    )
    .unwrap()
}

fn value(t: &Trial) -> Outcome {
    let x: Vec<f64> = (1..=N_VARS)
        .map(|i| t.config.f64(&format!("x{i}")).unwrap())
        .collect();
    let mut f = Problem::Zdt1.evaluate(&x).to_vec();
    // Budget-dependent, so promotions matter.
    f[0] += 1.0 / t.budget;
    Outcome::Success { objectives: f }
}

fn study() -> MemoryStore {
    let mut s = MemoryStore::new();
    s.create_study(&NewStudy {
        name: "s".into(),
        info: RunInfo {
            objectives: vec!["f1".into(), "f2".into()],
            objective_sources: vec![],
            default_config: Problem::Zdt1.space().default_config(),
            meta_hash: String::new(),
            constraint_reference: Default::default(),
            config_toml: String::new(),
        },
        leases: LeaseSettings::default(),
        data_fingerprint: None,
        version: String::new(),
    })
    .unwrap();
    s
}

fn finish(s: &mut MemoryStore, lease: &Lease) {
    let line = TrialLine::of(&lease.trial, &value(&lease.trial), None, vec![], 0.0, 0.0);
    assert!(s.finish(lease, &line, None).unwrap());
}

#[test]
fn one_worker_through_the_store_asks_what_the_bare_optimizer_asks() {
    for schedule in [Schedule::Hyperband, Schedule::Asha] {
        let mut bare = smbo(schedule, 30);
        let mut expected = Vec::new();
        while let Ask::Trial(t) = bare.ask() {
            bare.tell(t.id, value(&t)).unwrap();
            expected.push(t);
        }
        let mut s = study();
        let mut r = Replica::new(smbo(schedule, 30), None);
        let owner = Owner::this_process("w");
        let mut got = Vec::new();
        loop {
            let since = r.since;
            match s.claim("s", &owner, since, &mut |ev| r.decide(ev)).unwrap() {
                Claim::Run(lease) => {
                    finish(&mut s, &lease);
                    got.push(lease.trial);
                }
                Claim::Wait => panic!("a single worker never waits"),
                Claim::Done => break,
            }
        }
        assert_eq!(got, expected, "{schedule:?}");
    }
}

#[test]
fn many_workers_finishing_out_of_order_replay_exactly() {
    for schedule in [Schedule::Hyperband, Schedule::Asha] {
        let mut s = study();
        let mut replicas: Vec<Replica> = (0..3)
            .map(|_| Replica::new(smbo(schedule, 40), None))
            .collect();
        let owners: Vec<Owner> = (0..3)
            .map(|w| Owner::this_process(format!("w{w}")))
            .collect();
        let mut running: Vec<(usize, Lease)> = Vec::new();
        let mut step = 0usize;
        let mut done = [false; 3];
        while !(done.iter().all(|d| *d) && running.is_empty()) {
            for w in 0..3 {
                if done[w] || running.iter().any(|(o, _)| *o == w) {
                    continue;
                }
                let r = &mut replicas[w];
                let since = r.since;
                match s
                    .claim("s", &owners[w], since, &mut |ev| r.decide(ev))
                    .unwrap()
                {
                    Claim::Run(lease) => running.push((w, lease)),
                    Claim::Wait => {}
                    Claim::Done => done[w] = true,
                }
            }
            // Finish a running trial chosen by a fixed pattern: not in the order asked.
            if !running.is_empty() {
                step += 1;
                let k = (step * 7) % running.len();
                let (_, lease) = running.remove(k);
                finish(&mut s, &lease);
            }
        }
        let lines = finished_lines(&mut s, "s").unwrap();
        assert_eq!(lines.len(), 40, "{schedule:?}");
        assert!(
            lines.iter().any(|l| l.continued_from.is_some()),
            "{schedule:?}: no promotion happened"
        );
        // A fresh replica (a process joining late) recomputes every decision as recorded.
        let mut fresh = Replica::verifying(smbo(schedule, 40), None);
        fresh.apply(&s.events("s", 0).unwrap()).unwrap();
        assert_eq!(fresh.lines, lines);
        // One that adopts the recorded decisions ends in the same optimizer state.
        let mut adopting = Replica::new(smbo(schedule, 40), None);
        adopting.apply(&s.events("s", 0).unwrap()).unwrap();
        assert_eq!(adopting.smbo().records(), fresh.smbo().records());
        // A log that another configuration wrote does not replay: it is checked, not trusted.
        let mut wrong = Replica::verifying(smbo(schedule, 40), None);
        let mut events = s.events("s", 0).unwrap();
        if let dsnn_hpo::store::EventKind::Ask { trial, .. } = &mut events[0].kind {
            trial.budget += 1.0;
        }
        let e = wrong.apply(&events).unwrap_err();
        assert!(e.contains("not what the optimizer asks on replay"), "{e}");
    }
}
