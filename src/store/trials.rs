//! A study's trials and their leases as a process holds them in memory: the store itself for
//! `memory://`, and what `journal://` rebuilds by replaying its log. Both answer the lease
//! questions (who holds a trial, what runs, what waits) from this one table; the SQL stores ask
//! their database instead.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{EventKind, Lease, Owner, Running};
use crate::opt::Trial;

#[derive(Debug, Clone)]
pub(super) enum State {
    Running {
        token: String,
        owner: Owner,
        heartbeat_at: f64,
    },
    Queued,
    Done,
}

#[derive(Debug, Clone)]
pub(super) struct TrialState {
    pub(super) trial: Trial,
    pub(super) state: State,
    pub(super) attempt: u32,
    /// Times its lease was taken away for silence.
    pub(super) stale: u32,
}

/// A study's trials by id.
pub(super) type Trials = BTreeMap<u64, TrialState>;

/// Seconds since the Unix epoch: lease times (0 if the clock is before it).
pub(super) fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// What a logged event does to the table: an `Ask` adds its trial, queued (a lease on it is
/// granted apart from the event), and a `Tell` ends its trial.
pub(super) fn apply(trials: &mut Trials, kind: &EventKind) {
    match kind {
        EventKind::Ask { trial, .. } => {
            trials.insert(
                trial.id,
                TrialState {
                    trial: trial.clone(),
                    state: State::Queued,
                    attempt: 0,
                    stale: 0,
                },
            );
        }
        EventKind::Tell { line } => {
            if let Some(ts) = trials.get_mut(&line.id) {
                ts.state = State::Done;
            }
        }
    }
}

/// Whether `lease` is the current holder of its trial.
pub(super) fn holds(trials: &Trials, lease: &Lease) -> bool {
    matches!(
        trials.get(&lease.trial.id).map(|t| &t.state),
        Some(State::Running { token, .. }) if *token == lease.token
    )
}

/// The leased trials of `study`, with how long each has been silent at time `t`.
pub(super) fn running(trials: &Trials, study: &str, t: f64) -> Vec<Running> {
    trials
        .values()
        .filter_map(|ts| match &ts.state {
            State::Running {
                token,
                owner,
                heartbeat_at,
            } => Some(Running {
                lease: Lease {
                    study: study.into(),
                    trial: ts.trial.clone(),
                    attempt: ts.attempt,
                    token: token.clone(),
                    owner: owner.clone(),
                },
                silent_s: t - heartbeat_at,
            }),
            _ => None,
        })
        .collect()
}

/// The trials waiting for a worker (their lease was released or taken away).
pub(super) fn queued(trials: &Trials) -> Vec<Trial> {
    trials
        .values()
        .filter(|ts| matches!(ts.state, State::Queued))
        .map(|ts| ts.trial.clone())
        .collect()
}
