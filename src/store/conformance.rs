//! The conformance suite every [`Store`] backend must pass: the in-memory store's semantics,
//! checked property by property. Public (not `cfg(test)`) because the integration tests of the
//! server backends run it too.
//!
//! Each property takes a factory that gives a fresh connection to a fresh, empty store; further
//! connections to that same store come from [`Store::connect_again`]. A violation panics with a
//! message naming what went wrong.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{
    Claim, Decision, Event, EventKind, LeaseSettings, NewStudy, Owner, RunInfo, Store, StoreError,
    TrialLine, TrialStatus,
};
use crate::opt::{AskState, Trial};
use crate::space::Config;

/// Gives a fresh connection to a fresh, empty store.
pub type Factory<'a> = dyn Fn() -> Box<dyn Store> + 'a;

/// One property: panics when the store made by the factory violates it.
pub type Property = fn(&Factory<'_>);

/// Every property, by name, in the order [`run_all`] runs them.
pub const PROPERTIES: &[(&str, Property)] = &[
    ("studies", studies),
    ("claim_run_records_ask", claim_run_records_ask),
    ("wait_and_done_record_nothing", wait_and_done_record_nothing),
    (
        "decide_sees_events_after_since",
        decide_sees_events_after_since,
    ),
    ("decide_error_writes_nothing", decide_error_writes_nothing),
    (
        "asking_an_id_twice_is_refused",
        asking_an_id_twice_is_refused,
    ),
    ("finish_records_tell", finish_records_tell),
    ("heartbeat", heartbeat),
    ("stale_lease_is_requeued", stale_lease_is_requeued),
    ("stale_token_is_fenced", stale_token_is_fenced),
    ("failed_after_max_retries", failed_after_max_retries),
    ("release_requeues_at_once", release_requeues_at_once),
    ("queued_and_running", queued_and_running),
    ("drop_checkpoints", drop_checkpoints),
    ("progress_survives_requeue", progress_survives_requeue),
    ("import", import),
    ("concurrent_workers", concurrent_workers),
];

/// Runs every property against fresh stores from `make`.
pub fn run_all(make: &Factory<'_>) {
    for (name, property) in PROPERTIES {
        eprintln!("store conformance: {name}");
        property(make);
    }
}

// ---- fixtures ----

/// Grace period of the lease tests: short, so they sleep little.
const GRACE_S: f64 = 0.3;
/// Long enough past [`GRACE_S`] for any store's clock.
const PAST_GRACE: Duration = Duration::from_millis(700);

fn new_study(name: &str, leases: LeaseSettings) -> NewStudy {
    let mut default_config = Config::new();
    default_config.insert("lr", 0.01);
    NewStudy {
        name: name.into(),
        info: RunInfo {
            objectives: vec!["loss".into(), "energy_kwh".into()],
            objective_sources: vec!["1 - validation accuracy".into(), "estimate".into()],
            default_config,
            meta_hash: "abc123".into(),
            constraint_reference: BTreeMap::new(),
            config_toml: "[search]\ntrials = 10\n".into(),
        },
        leases,
        data_fingerprint: Some("mnist:60000:deadbeef".into()),
        version: "0.1.0".into(),
    }
}

fn long_leases() -> LeaseSettings {
    LeaseSettings {
        heartbeat_s: 30.0,
        grace_s: 600.0,
        max_retries: 2,
    }
}

fn short_leases(max_retries: u32) -> LeaseSettings {
    LeaseSettings {
        heartbeat_s: 0.1,
        grace_s: GRACE_S,
        max_retries,
    }
}

/// A fresh store holding one study named "s".
fn store_with_study(make: &Factory<'_>, leases: LeaseSettings) -> Box<dyn Store> {
    let mut store = make();
    store
        .create_study(&new_study("s", leases))
        .unwrap_or_else(|e| panic!("create_study on a fresh store: {e}"));
    store
}

fn trial(id: u64) -> Trial {
    let mut config = Config::new();
    config.insert("lr", 0.001 * (id + 1) as f64);
    config.insert("shift_depth", (id % 5) as i64);
    Trial {
        id,
        config,
        budget: 1.0 + (id % 3) as f64,
        continues: None,
    }
}

fn owner(name: &str) -> Owner {
    Owner {
        host: "test-host".into(),
        pid: 4242,
        name: name.into(),
    }
}

fn success(t: &Trial) -> TrialLine {
    let mut line = TrialLine::success(t.id, t.config.clone(), t.budget, vec![0.5, 1e-6]);
    line.continued_from = t.continues;
    line
}

/// Claims with a decision of `decision`, expecting a lease.
fn claim_run(store: &mut dyn Store, who: &str, decision: Trial) -> super::Lease {
    let mut decision = Some(decision);
    match claim_with(store, who, 0, &mut |_| {
        Ok(decision
            .take()
            .map_or(Decision::Wait, |t| Decision::Run(t, None)))
    }) {
        Claim::Run(lease) => lease,
        other => panic!("claim with Decision::Run gave {other:?}, expected a lease"),
    }
}

/// Claims with a decide that must not be called (a queued trial is handed out first).
fn claim_queued(store: &mut dyn Store, who: &str) -> super::Lease {
    match claim_with(store, who, 0, &mut |_| {
        Err("decide called although a trial was queued".into())
    }) {
        Claim::Run(lease) => lease,
        other => panic!("claim with a queued trial gave {other:?}, expected its lease"),
    }
}

fn claim_with(
    store: &mut dyn Store,
    who: &str,
    since: u64,
    decide: &mut super::Decide<'_>,
) -> Claim {
    store
        .claim("s", &owner(who), since, decide)
        .unwrap_or_else(|e| panic!("claim failed: {e}"))
}

fn events(store: &mut dyn Store) -> Vec<Event> {
    store
        .events("s", 0)
        .unwrap_or_else(|e| panic!("events failed: {e}"))
}

fn assert_ordered(events: &[Event]) {
    for pair in events.windows(2) {
        assert!(
            pair[0].seq < pair[1].seq,
            "events out of order: seq {} before seq {}",
            pair[0].seq,
            pair[1].seq
        );
    }
}

fn queued_ids(store: &mut dyn Store) -> Vec<u64> {
    store
        .queued("s")
        .unwrap_or_else(|e| panic!("queued failed: {e}"))
        .iter()
        .map(|t| t.id)
        .collect()
}

fn running_ids(store: &mut dyn Store) -> Vec<u64> {
    let mut ids: Vec<u64> = store
        .running("s")
        .unwrap_or_else(|e| panic!("running failed: {e}"))
        .iter()
        .map(|r| r.lease.trial.id)
        .collect();
    ids.sort_unstable();
    ids
}

fn ok<T>(what: &str, r: Result<T, StoreError>) -> T {
    r.unwrap_or_else(|e| panic!("{what} failed: {e}"))
}

// ---- properties ----

/// Studies are created, listed oldest first, read back whole; names are unique; a missing one
/// is an error naming the known ones.
pub fn studies(make: &Factory<'_>) {
    let mut store = make();
    assert_eq!(
        ok("studies", store.studies()),
        Vec::<String>::new(),
        "a fresh store lists studies"
    );
    match store.study("nope") {
        Err(StoreError::NoSuchStudy { name, known, .. }) => {
            assert_eq!(name, "nope");
            assert_eq!(known, "none", "a fresh store names known studies");
        }
        other => panic!("study() of a fresh store gave {other:?}, expected NoSuchStudy"),
    }
    let a = new_study("alpha", long_leases());
    let b = new_study("beta", short_leases(1));
    ok("create_study", store.create_study(&a));
    ok("create_study", store.create_study(&b));
    match store.create_study(&new_study("alpha", short_leases(0))) {
        Err(StoreError::StudyExists { name, .. }) => assert_eq!(name, "alpha"),
        other => panic!("a second study named alpha gave {other:?}, expected StudyExists"),
    }
    assert_eq!(ok("studies", store.studies()), ["alpha", "beta"]);
    let rec = ok("study", store.study("beta"));
    assert_eq!(
        rec.study, b,
        "the study read back differs from the one created"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    assert!(
        (rec.created_unix_s - now).abs() < 600.0,
        "created_unix_s {} is not the time of creation (now {now})",
        rec.created_unix_s
    );
    assert_eq!(
        ok("study", store.study("alpha")).study,
        a,
        "the duplicate create changed the first study"
    );
    match store.study("gamma") {
        Err(StoreError::NoSuchStudy { known, .. }) => assert!(
            known.contains("alpha") && known.contains("beta"),
            "NoSuchStudy names {known:?}, not the known studies alpha and beta"
        ),
        other => panic!("study(\"gamma\") gave {other:?}, expected NoSuchStudy"),
    }
    let mut again = ok("connect_again", store.connect_again());
    assert_eq!(
        ok("studies", again.studies()),
        ["alpha", "beta"],
        "another connection sees other studies"
    );
    assert!(
        matches!(
            again.claim("gamma", &owner("w"), 0, &mut |_| Ok(Decision::Wait)),
            Err(StoreError::NoSuchStudy { .. })
        ),
        "claim in a missing study must be NoSuchStudy"
    );
    assert!(
        matches!(
            again.events("gamma", 0),
            Err(StoreError::NoSuchStudy { .. })
        ),
        "events of a missing study must be NoSuchStudy"
    );
}

/// `Decision::Run` records one `Ask` event, with the decider's state bit for bit (NaN and
/// extreme bit patterns included), and hands out a first-attempt lease.
pub fn claim_run_records_ask(make: &Factory<'_>) {
    let mut store = store_with_study(make, long_leases());
    let state = AskState {
        vector: vec![0.25f64.to_bits(), f64::NAN.to_bits(), u64::MAX, 0],
        rng: u64::MAX - 1,
    };
    let mut decision = Some((trial(0), state.clone()));
    let lease = match claim_with(&mut *store, "w1", 0, &mut |_| {
        Ok(decision
            .take()
            .map_or(Decision::Wait, |(t, s)| Decision::Run(t, Some(s))))
    }) {
        Claim::Run(lease) => lease,
        other => panic!("claim with Decision::Run gave {other:?}, expected a lease"),
    };
    assert_eq!(lease.study, "s");
    assert_eq!(lease.trial, trial(0));
    assert_eq!(lease.attempt, 1, "a new trial's first attempt");
    assert_eq!(lease.owner, owner("w1"));
    assert!(!lease.token.is_empty(), "a lease needs a token");
    let ev = events(&mut *store);
    assert_eq!(ev.len(), 1, "one Ask event expected, got {ev:?}");
    assert_eq!(
        ev[0].kind,
        EventKind::Ask {
            trial: trial(0),
            state: Some(state)
        }
    );
    let second = claim_run(&mut *store, "w2", trial(1));
    assert_ne!(second.token, lease.token, "two leases share a token");
    let ev = events(&mut *store);
    assert_eq!(ev.len(), 2);
    assert_ordered(&ev);
    let running = ok("running", store.running("s"));
    let held: Vec<_> = running.iter().map(|r| r.lease.clone()).collect();
    assert!(
        held.contains(&lease) && held.contains(&second) && held.len() == 2,
        "running() gives {held:?}, expected the two leases handed out"
    );
}

/// `Decision::Wait` and `Decision::Done` write nothing.
pub fn wait_and_done_record_nothing(make: &Factory<'_>) {
    let mut store = store_with_study(make, long_leases());
    assert_eq!(
        claim_with(&mut *store, "w", 0, &mut |_| Ok(Decision::Wait)),
        Claim::Wait
    );
    assert_eq!(
        claim_with(&mut *store, "w", 0, &mut |_| Ok(Decision::Done)),
        Claim::Done
    );
    assert!(events(&mut *store).is_empty(), "Wait/Done recorded events");
    assert!(running_ids(&mut *store).is_empty() && queued_ids(&mut *store).is_empty());
}

/// `decide` gets exactly the events after `since`, in order: other workers' asks and tells, and
/// the `Tell` the store itself wrote for a trial it failed in the same claim.
pub fn decide_sees_events_after_since(make: &Factory<'_>) {
    let mut store = store_with_study(make, long_leases());
    let mut other = ok("connect_again", store.connect_again());
    let l0 = claim_run(&mut *other, "other", trial(0));
    assert!(ok("finish", other.finish(&l0, &success(&trial(0)), None)));
    let _l1 = claim_run(&mut *other, "other", trial(1));
    let all = events(&mut *store);
    assert_eq!(all.len(), 3, "ask 0, tell 0, ask 1 expected, got {all:?}");
    assert_ordered(&all);

    let mut seen = Vec::new();
    let claim = claim_with(&mut *store, "w", all[0].seq, &mut |ev| {
        seen = ev.to_vec();
        Ok(Decision::Wait)
    });
    assert_eq!(claim, Claim::Wait);
    assert_eq!(
        seen,
        all[1..],
        "decide with since = first seq must see every later event"
    );
    let _ = claim_with(&mut *store, "w", all[2].seq, &mut |ev| {
        seen = ev.to_vec();
        Ok(Decision::Wait)
    });
    assert!(seen.is_empty(), "decide saw events up to since: {seen:?}");

    // A worker goes silent; with max_retries 0 the next claim fails its trial and tells decide.
    let mut store = store_with_study(make, short_leases(0));
    let mut other = ok("connect_again", store.connect_again());
    let l0 = claim_run(&mut *other, "other", trial(0));
    assert!(ok("finish", other.finish(&l0, &success(&trial(0)), None)));
    let l1 = claim_run(&mut *other, "other", trial(1));
    let all = events(&mut *store);
    std::thread::sleep(PAST_GRACE);
    let _ = claim_with(&mut *store, "w", all[2].seq, &mut |ev| {
        seen = ev.to_vec();
        Ok(Decision::Wait)
    });
    assert_eq!(
        seen.len(),
        1,
        "decide must see the Tell of the trial the store failed, got {seen:?}"
    );
    assert!(seen[0].seq > all[2].seq);
    assert_eq!(
        events(&mut *store)[3..],
        seen[..],
        "the store's Tell is recorded"
    );
    match &seen[0].kind {
        EventKind::Tell { line } => {
            assert_eq!(line.id, 1);
            assert_eq!(line.status, TrialStatus::Failed);
        }
        other => panic!("expected the failed trial's Tell, got {other:?}"),
    }
    assert!(
        !ok("heartbeat", other.heartbeat(&l1)),
        "heartbeat of a failed trial"
    );
}

/// An `Err` from `decide` writes nothing, not even the failure of a silent trial found by the
/// same claim.
pub fn decide_error_writes_nothing(make: &Factory<'_>) {
    let mut store = store_with_study(make, short_leases(0));
    let lease = claim_run(&mut *store, "w", trial(0));
    let before = events(&mut *store);
    std::thread::sleep(PAST_GRACE);
    match store.claim("s", &owner("w"), 0, &mut |_| Err("replay broke".into())) {
        Err(StoreError::Decide(msg)) => assert!(msg.contains("replay broke"), "{msg}"),
        other => panic!("decide returning Err gave {other:?}, expected StoreError::Decide"),
    }
    assert_eq!(
        events(&mut *store),
        before,
        "a failed decide left events behind"
    );
    assert_eq!(
        running_ids(&mut *store),
        [0],
        "a failed decide changed the silent trial's state"
    );
    // The rolled-back claim changed nothing: the next one fails the trial as if it were first.
    let mut seen = Vec::new();
    let _ = claim_with(&mut *store, "w", before[0].seq, &mut |ev| {
        seen = ev.to_vec();
        Ok(Decision::Wait)
    });
    assert!(
        matches!(&seen[..], [Event { kind: EventKind::Tell { line }, .. }] if line.id == lease.trial.id),
        "after a failed decide the next claim must fail the silent trial once, decide saw {seen:?}"
    );
}

/// A decision to run a trial id already asked is refused, and writes nothing.
pub fn asking_an_id_twice_is_refused(make: &Factory<'_>) {
    let mut store = store_with_study(make, long_leases());
    let lease = claim_run(&mut *store, "w", trial(7));
    assert!(ok(
        "finish",
        store.finish(&lease, &success(&trial(7)), None)
    ));
    let before = events(&mut *store);
    let mut again = trial(7);
    again.budget = 9.0;
    match store.claim("s", &owner("w"), 0, &mut |_| {
        Ok(Decision::Run(again.clone(), None))
    }) {
        Err(StoreError::Decide(msg)) => assert!(msg.contains('7'), "should name the id: {msg}"),
        other => panic!("asking trial 7 twice gave {other:?}, expected StoreError::Decide"),
    }
    assert_eq!(events(&mut *store), before, "the refused ask wrote events");
    assert!(running_ids(&mut *store).is_empty());
}

/// `finish` records a `Tell`, stores the checkpoint and deletes the one it continued from.
pub fn finish_records_tell(make: &Factory<'_>) {
    let mut store = store_with_study(make, long_leases());
    let l0 = claim_run(&mut *store, "w", trial(0));
    let line0 = success(&trial(0));
    let blob: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    assert!(ok("finish", store.finish(&l0, &line0, Some(&blob[..]))));
    assert_eq!(
        ok("checkpoint", store.checkpoint("s", 0)),
        Some(blob.clone()),
        "the checkpoint read back differs"
    );
    assert_eq!(ok("checkpoint", store.checkpoint("s", 7)), None);

    let mut t1 = trial(1);
    t1.config = trial(0).config;
    t1.continues = Some(0);
    let l1 = claim_run(&mut *store, "w", t1.clone());
    let mut line1 = success(&t1);
    line1.status = TrialStatus::Infeasible;
    line1.violated = vec!["weight_memory".into()];
    assert!(ok(
        "finish",
        store.finish(&l1, &line1, Some(&b"second"[..]))
    ));
    assert_eq!(
        ok("checkpoint", store.checkpoint("s", 0)),
        None,
        "the checkpoint of the continued trial must be deleted"
    );
    assert_eq!(
        ok("checkpoint", store.checkpoint("s", 1)),
        Some(b"second".to_vec())
    );

    let ev = events(&mut *store);
    assert_ordered(&ev);
    let kinds: Vec<EventKind> = ev.into_iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::Ask {
                trial: trial(0),
                state: None
            },
            EventKind::Tell {
                line: Box::new(line0)
            },
            EventKind::Ask {
                trial: t1,
                state: None
            },
            EventKind::Tell {
                line: Box::new(line1)
            },
        ],
        "events after two finished trials"
    );
    assert!(running_ids(&mut *store).is_empty() && queued_ids(&mut *store).is_empty());
    assert!(
        !ok("finish", store.finish(&l0, &success(&trial(0)), None)),
        "a second finish of a finished trial must be refused"
    );
    assert_eq!(events(&mut *store).len(), 4, "the refused finish wrote");
}

/// A heartbeat renews the holder's lease; once the lease is taken away it is refused.
pub fn heartbeat(make: &Factory<'_>) {
    let leases = LeaseSettings {
        heartbeat_s: 0.2,
        grace_s: 0.6,
        max_retries: 2,
    };
    let mut store = store_with_study(make, leases);
    let lease = claim_run(&mut *store, "w", trial(0));
    let mut beat = ok("connect_again", store.connect_again());
    // Heartbeats keep the lease past the grace period.
    for _ in 0..4 {
        std::thread::sleep(Duration::from_secs_f64(leases.heartbeat_s));
        assert!(
            ok("heartbeat", beat.heartbeat(&lease)),
            "heartbeat of the holder refused"
        );
        assert_eq!(
            claim_with(&mut *store, "x", 0, &mut |_| Ok(Decision::Wait)),
            Claim::Wait,
            "a heartbeaten lease was taken away"
        );
    }
    let silent = ok("running", store.running("s"));
    assert!(
        silent.len() == 1 && silent[0].silent_s >= 0.0 && silent[0].silent_s < leases.grace_s,
        "silent_s of a lease just heartbeaten: {silent:?}"
    );
    let mut forged = lease.clone();
    forged.token = super::new_token();
    assert!(
        !ok("heartbeat", beat.heartbeat(&forged)),
        "heartbeat with a wrong token accepted"
    );
    std::thread::sleep(Duration::from_secs_f64(leases.grace_s) + PAST_GRACE);
    let taken = claim_queued(&mut *store, "thief");
    assert_eq!(taken.trial.id, 0);
    assert!(
        !ok("heartbeat", beat.heartbeat(&lease)),
        "heartbeat of a lease taken away must be false"
    );
    assert!(ok("heartbeat", beat.heartbeat(&taken)));
}

/// A lease silent past the grace period is queued again; the next claim hands it out as
/// attempt 2 with a new token, before any new decision.
pub fn stale_lease_is_requeued(make: &Factory<'_>) {
    let mut store = store_with_study(make, short_leases(2));
    let first = claim_run(&mut *store, "w1", trial(0));
    std::thread::sleep(PAST_GRACE);
    let second = claim_queued(&mut *store, "w2");
    assert_eq!(second.trial, trial(0));
    assert_eq!(second.attempt, 2, "a re-claimed trial's attempt");
    assert_ne!(second.token, first.token, "a re-claim must get a new token");
    assert_eq!(second.owner, owner("w2"));
    assert_eq!(
        events(&mut *store).len(),
        1,
        "re-queueing or re-claiming wrote events"
    );
    assert_eq!(running_ids(&mut *store), [0]);
    let held = ok("running", store.running("s"));
    assert_eq!(held[0].lease, second, "running() shows the new holder");
}

/// The token of a lease taken away can neither finish nor heartbeat nor release, and writes
/// nothing; the new holder finishes.
pub fn stale_token_is_fenced(make: &Factory<'_>) {
    let mut store = store_with_study(make, short_leases(2));
    let old = claim_run(&mut *store, "w1", trial(0));
    std::thread::sleep(PAST_GRACE);
    let new = claim_queued(&mut *store, "w2");
    let mut late = ok("connect_again", store.connect_again());
    let before = events(&mut *store);
    assert!(
        !ok(
            "finish",
            late.finish(&old, &success(&trial(0)), Some(&b"late"[..]))
        ),
        "a finish with a stale token must be refused"
    );
    assert!(!ok("heartbeat", late.heartbeat(&old)));
    assert!(!ok("release", late.release(&old)));
    assert_eq!(events(&mut *store), before, "a refused finish wrote events");
    assert_eq!(
        ok("checkpoint", store.checkpoint("s", 0)),
        None,
        "a refused finish stored its checkpoint"
    );
    assert_eq!(running_ids(&mut *store), [0]);
    assert!(ok("finish", store.finish(&new, &success(&trial(0)), None)));
    let tells = events(&mut *store)
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Tell { .. }))
        .count();
    assert_eq!(tells, 1, "exactly one Tell for the fenced trial");
}

/// Progress saved by a lease holder replaces the earlier one, survives the lease being taken away
/// (the next attempt continues it) and a release, is refused from a stale token, and is gone
/// once the trial finishes or the study's saved states are dropped.
pub fn progress_survives_requeue(make: &Factory<'_>) {
    let mut store = store_with_study(make, short_leases(2));
    assert_eq!(ok("progress", store.progress("s", 0)), None);
    let first = claim_run(&mut *store, "w1", trial(0));
    assert!(ok("save_progress", store.save_progress(&first, b"epoch 1")));
    assert!(ok("save_progress", store.save_progress(&first, b"epoch 2")));
    assert_eq!(
        ok("progress", store.progress("s", 0)),
        Some(b"epoch 2".to_vec()),
        "the later progress replaces the earlier"
    );
    std::thread::sleep(PAST_GRACE);
    let second = claim_queued(&mut *store, "w2");
    assert_eq!(second.attempt, 2);
    assert_eq!(
        ok("progress", store.progress("s", 0)),
        Some(b"epoch 2".to_vec()),
        "a re-queued trial lost its progress"
    );
    let mut late = ok("connect_again", store.connect_again());
    assert!(
        !ok("save_progress", late.save_progress(&first, b"late")),
        "progress from a stale token must be refused"
    );
    assert_eq!(
        ok("progress", store.progress("s", 0)),
        Some(b"epoch 2".to_vec())
    );
    assert!(ok(
        "save_progress",
        store.save_progress(&second, b"epoch 3")
    ));
    assert!(ok("release", store.release(&second)));
    let third = claim_queued(&mut *store, "w3");
    assert_eq!(
        ok("progress", store.progress("s", 0)),
        Some(b"epoch 3".to_vec()),
        "a released trial lost its progress"
    );
    assert!(ok(
        "finish",
        store.finish(&third, &success(&trial(0)), None)
    ));
    assert_eq!(
        ok("progress", store.progress("s", 0)),
        None,
        "a finished trial keeps its progress"
    );
    let other = claim_run(&mut *store, "w1", trial(1));
    assert!(ok("save_progress", store.save_progress(&other, b"x")));
    ok("drop_checkpoints", store.drop_checkpoints("s"));
    assert_eq!(ok("progress", store.progress("s", 1)), None);
}

/// After `max_retries` silent periods the trial is failed with a `Tell` whose line has status
/// Failed, once.
pub fn failed_after_max_retries(make: &Factory<'_>) {
    let mut store = store_with_study(make, short_leases(1));
    let first = claim_run(&mut *store, "w1", trial(3));
    std::thread::sleep(PAST_GRACE);
    let second = claim_queued(&mut *store, "w2");
    assert_eq!(second.attempt, 2);
    std::thread::sleep(PAST_GRACE);
    let mut seen = Vec::new();
    assert_eq!(
        claim_with(&mut *store, "w3", 0, &mut |ev| {
            seen = ev.to_vec();
            Ok(Decision::Done)
        }),
        Claim::Done,
        "after max_retries the trial is not handed out again"
    );
    let ev = events(&mut *store);
    assert_eq!(seen, ev, "decide must see the ask and the store's Tell");
    assert_eq!(ev.len(), 2, "ask and failure expected, got {ev:?}");
    assert_ordered(&ev);
    match &ev[1].kind {
        EventKind::Tell { line } => {
            assert_eq!(line.id, 3);
            assert_eq!(line.status, TrialStatus::Failed, "the store's Tell status");
            assert!(line.objectives.is_empty());
            assert!(
                line.reason.as_deref().is_some_and(|r| r.contains("w2")),
                "the failure should name the last silent worker: {:?}",
                line.reason
            );
            assert_eq!(line.trial(), trial(3));
        }
        other => panic!("expected a Tell, got {other:?}"),
    }
    assert!(running_ids(&mut *store).is_empty() && queued_ids(&mut *store).is_empty());
    assert!(!ok(
        "finish",
        store.finish(&first, &success(&trial(3)), None)
    ));
    assert!(!ok(
        "finish",
        store.finish(&second, &success(&trial(3)), None)
    ));
    let _ = claim_with(&mut *store, "w3", 0, &mut |_| Ok(Decision::Wait));
    assert_eq!(events(&mut *store).len(), 2, "the trial was failed twice");
}

/// `release` queues the trial again at once, not counted as a retry, and the next claim takes it
/// before any new decision.
pub fn release_requeues_at_once(make: &Factory<'_>) {
    let mut store = store_with_study(make, short_leases(1));
    let lease = claim_run(&mut *store, "w1", trial(0));
    assert!(ok("release", store.release(&lease)));
    assert_eq!(queued_ids(&mut *store), [0]);
    assert!(running_ids(&mut *store).is_empty());
    assert!(
        !ok("release", store.release(&lease)),
        "a second release of the same lease"
    );
    assert!(!ok("heartbeat", store.heartbeat(&lease)));
    assert!(!ok(
        "finish",
        store.finish(&lease, &success(&trial(0)), None)
    ));
    let again = claim_queued(&mut *store, "w2");
    assert_eq!(again.trial, trial(0));
    assert_eq!(again.attempt, 2);
    assert_ne!(again.token, lease.token);
    assert_eq!(events(&mut *store).len(), 1, "release wrote events");
    // max_retries is 1: had the release counted as a retry, this silence would fail the trial;
    // it is queued once more instead, and failed only after the next silence.
    std::thread::sleep(PAST_GRACE);
    let third = claim_queued(&mut *store, "w3");
    assert_eq!(third.attempt, 3, "release counted as a retry");
    std::thread::sleep(PAST_GRACE);
    assert_eq!(
        claim_with(&mut *store, "w4", 0, &mut |_| Ok(Decision::Wait)),
        Claim::Wait
    );
    let ev = events(&mut *store);
    assert!(
        matches!(&ev[..], [_, Event { kind: EventKind::Tell { line }, .. }] if line.status == TrialStatus::Failed),
        "the second silence after a release must fail the trial: {ev:?}"
    );
}

/// `queued()` and `running()` report the trials in each state.
pub fn queued_and_running(make: &Factory<'_>) {
    let mut store = store_with_study(make, long_leases());
    let leases: Vec<_> = (0..4)
        .map(|i| claim_run(&mut *store, &format!("w{i}"), trial(i)))
        .collect();
    assert!(ok("release", store.release(&leases[2])));
    assert!(ok("release", store.release(&leases[1])));
    assert!(ok(
        "finish",
        store.finish(&leases[3], &success(&trial(3)), None)
    ));
    assert_eq!(queued_ids(&mut *store), [1, 2], "queued, lowest id first");
    assert_eq!(
        ok("queued", store.queued("s")),
        [trial(1), trial(2)],
        "queued trials read back"
    );
    let running = ok("running", store.running("s"));
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].lease, leases[0]);
    assert!(
        running[0].silent_s >= 0.0 && running[0].silent_s < 60.0,
        "silent_s {}",
        running[0].silent_s
    );
    let next = claim_queued(&mut *store, "w9");
    assert_eq!(
        next.trial.id, 1,
        "the queued trial with the lowest id first"
    );
    assert_eq!(queued_ids(&mut *store), [2]);
    assert_eq!(running_ids(&mut *store), [0, 1]);
}

/// `drop_checkpoints` deletes every checkpoint of the study, and only of that study.
pub fn drop_checkpoints(make: &Factory<'_>) {
    let mut store = store_with_study(make, long_leases());
    ok(
        "create_study",
        store.create_study(&new_study("other", long_leases())),
    );
    for i in 0..3 {
        let l = claim_run(&mut *store, "w", trial(i));
        assert!(ok(
            "finish",
            store.finish(&l, &success(&trial(i)), Some(&[i as u8; 10][..]))
        ));
    }
    let ol = match ok(
        "claim",
        store.claim("other", &owner("w"), 0, &mut |_| {
            Ok(Decision::Run(trial(0), None))
        }),
    ) {
        Claim::Run(l) => l,
        other => panic!("claim in study other gave {other:?}"),
    };
    assert!(ok(
        "finish",
        store.finish(&ol, &success(&trial(0)), Some(&b"keep"[..]))
    ));
    ok("drop_checkpoints", store.drop_checkpoints("s"));
    for i in 0..3 {
        assert_eq!(ok("checkpoint", store.checkpoint("s", i)), None);
    }
    assert_eq!(
        ok("checkpoint", store.checkpoint("other", 0)),
        Some(b"keep".to_vec()),
        "drop_checkpoints deleted another study's checkpoint"
    );
    assert_eq!(
        events(&mut *store).len(),
        6,
        "drop_checkpoints changed events"
    );
}

/// `import` appends events in order; an `Ask` without a later `Tell` leaves its trial queued,
/// claimed before any new decision.
pub fn import(make: &Factory<'_>) {
    let mut store = store_with_study(make, long_leases());
    let kinds = vec![
        EventKind::Ask {
            trial: trial(0),
            state: None,
        },
        EventKind::Ask {
            trial: trial(1),
            state: None,
        },
        EventKind::Tell {
            line: Box::new(success(&trial(0))),
        },
        EventKind::Ask {
            trial: trial(2),
            state: None,
        },
        EventKind::Ask {
            trial: trial(3),
            state: None,
        },
        EventKind::Tell {
            line: Box::new(success(&trial(3))),
        },
    ];
    ok("import", store.import("s", &kinds));
    let ev = events(&mut *store);
    assert_ordered(&ev);
    assert_eq!(
        ev.into_iter().map(|e| e.kind).collect::<Vec<_>>(),
        kinds,
        "imported events read back"
    );
    assert_eq!(queued_ids(&mut *store), [1, 2], "asks without tells queued");
    assert!(running_ids(&mut *store).is_empty());
    let a = claim_queued(&mut *store, "w");
    let b = claim_queued(&mut *store, "w");
    assert_eq!(
        (a.trial.id, b.trial.id),
        (1, 2),
        "imported trials in id order"
    );
    assert_eq!(a.trial, trial(1));
    assert!(ok("finish", store.finish(&a, &success(&trial(1)), None)));
    let mut seen = Vec::new();
    let c = claim_with(&mut *store, "w", 0, &mut |ev| {
        seen = ev.to_vec();
        Ok(Decision::Run(trial(4), None))
    });
    assert!(matches!(c, Claim::Run(l) if l.trial.id == 4));
    assert_eq!(
        seen.len(),
        7,
        "decide sees imported events and the new tell"
    );
    assert!(
        matches!(
            store.import("missing", &kinds),
            Err(StoreError::NoSuchStudy { .. })
        ),
        "import into a missing study"
    );
}

/// Trials the concurrency property runs.
const CONCURRENT_TRIALS: u64 = 60;

/// Four workers, each on its own connection, claim and finish in a loop with a counter
/// "optimizer" replaying the events: every decision must see every ask made before it, so the
/// ids are unique and contiguous, and every trial is told exactly once.
pub fn concurrent_workers(make: &Factory<'_>) {
    let store = store_with_study(make, long_leases());
    let connections: Vec<Box<dyn Store>> = (0..4)
        .map(|_| ok("connect_again", store.connect_again()))
        .collect();
    let handles: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(w, mut conn)| {
            std::thread::spawn(move || {
                let who = format!("worker {w}");
                let mut asks = 0u64;
                let mut last_seq = 0u64;
                let mut ran = 0u64;
                loop {
                    let since = last_seq;
                    let mut decide = |ev: &[Event]| -> Result<Decision, String> {
                        for e in ev {
                            if e.seq <= last_seq {
                                return Err(format!(
                                    "{who}: event seq {} not after since {last_seq}",
                                    e.seq
                                ));
                            }
                            last_seq = e.seq;
                            if let EventKind::Ask { trial, .. } = &e.kind {
                                if trial.id != asks {
                                    return Err(format!(
                                        "{who}: replayed ask of trial {} where trial {asks} was next: a decision missed another's ask",
                                        trial.id
                                    ));
                                }
                                asks += 1;
                            }
                        }
                        Ok(if asks < CONCURRENT_TRIALS {
                            Decision::Run(trial(asks), None)
                        } else {
                            Decision::Done
                        })
                    };
                    let claim = conn
                        .claim("s", &owner(&who), since, &mut decide)
                        .unwrap_or_else(|e| panic!("{who}: claim failed: {e}"));
                    match claim {
                        Claim::Run(lease) => {
                            let line = success(&lease.trial);
                            assert!(
                                conn.finish(&lease, &line, None)
                                    .unwrap_or_else(|e| panic!("{who}: finish failed: {e}")),
                                "{who}: finish of its own lease refused"
                            );
                            ran += 1;
                        }
                        Claim::Done => return ran,
                        Claim::Wait => panic!("{who}: the counter optimizer never waits"),
                    }
                }
            })
        })
        .collect();
    let mut ran = 0;
    for h in handles {
        ran += h
            .join()
            .unwrap_or_else(|_| panic!("a concurrent worker panicked (see its message above)"));
    }
    assert_eq!(ran, CONCURRENT_TRIALS, "trials run by all workers together");
    let mut store = store;
    let ev = events(&mut *store);
    assert_ordered(&ev);
    let mut asks = BTreeMap::new();
    let mut tells = BTreeMap::new();
    for e in &ev {
        match &e.kind {
            EventKind::Ask { trial, .. } => *asks.entry(trial.id).or_insert(0) += 1,
            EventKind::Tell { line } => *tells.entry(line.id).or_insert(0) += 1,
        }
    }
    let expected: BTreeMap<u64, i32> = (0..CONCURRENT_TRIALS).map(|i| (i, 1)).collect();
    assert_eq!(asks, expected, "each id 0..N asked exactly once");
    assert_eq!(tells, expected, "each id 0..N told exactly once");
    assert!(running_ids(&mut *store).is_empty() && queued_ids(&mut *store).is_empty());
}
