//! A process's copy of the study's optimizer, kept up to date from the store's log.
//!
//! Every process replays the same events in the same order into an optimizer built from the same
//! configuration and seed, so every copy makes the decision the log records. Decisions are made
//! only inside [`crate::store::Store::claim`] (under the study lock), right after replaying what
//! others recorded. A replayed `Ask` carries the state its decider reached, so a worker takes it
//! over ([`Smbo::adopt`]) instead of refitting the model for every other worker's decision while
//! holding the lock: that refit made the lock, not the trials, the bottleneck at 8 workers. A
//! verifying replica ([`Replica::verifying`]) recomputes every decision instead, and a replayed
//! `Ask` that is not what it asks means the log belongs to another configuration or release.
//!
//! After the optimizer asks nothing more, one more trial may be decided (as soon as no trial of
//! the default configuration is running): the default configuration at the largest budget (the
//! baseline the report compares against), unless a successful trial of it already reached that
//! budget.

use std::collections::{BTreeMap, VecDeque};

use crate::opt::{Ask, Smbo, Trial};
use crate::space::Config;
use crate::store::{BASELINE_IDS, Decision, Event, EventKind, TrialLine};

pub struct Replica {
    smbo: Smbo,
    /// The last event replayed.
    pub since: u64,
    /// Every finished trial, in log order (the baseline's included).
    pub lines: Vec<TrialLine>,
    /// Decisions of this process not yet seen back in the log.
    own: VecDeque<Trial>,
    /// Baseline trials asked and not finished.
    baseline_pending: BTreeMap<u64, Trial>,
    baseline_asked: u64,
    /// The default configuration and the largest budget, when a baseline is wanted.
    baseline: Option<(Config, f64)>,
    /// Recompute every replayed decision instead of adopting it.
    verify: bool,
}

fn mismatch(what: String) -> String {
    format!("{what}; the study's log belongs to another configuration or dsnn-hpo release")
}

impl Replica {
    pub fn new(smbo: Smbo, baseline: Option<(Config, f64)>) -> Replica {
        Replica {
            smbo,
            since: 0,
            lines: Vec::new(),
            own: VecDeque::new(),
            baseline_pending: BTreeMap::new(),
            baseline_asked: 0,
            baseline,
            verify: false,
        }
    }

    /// A replica that recomputes every decision it replays and checks it against the log.
    pub fn verifying(smbo: Smbo, baseline: Option<(Config, f64)>) -> Replica {
        Replica {
            verify: true,
            ..Replica::new(smbo, baseline)
        }
    }

    pub fn smbo(&self) -> &Smbo {
        &self.smbo
    }

    /// Replays `events` (those after [`Replica::since`], in order).
    pub fn apply(&mut self, events: &[Event]) -> Result<(), String> {
        for e in events {
            if e.seq <= self.since {
                continue;
            }
            match &e.kind {
                EventKind::Ask { trial, .. } if trial.id >= BASELINE_IDS => {
                    if self.own.front() == Some(trial) {
                        self.own.pop_front();
                    }
                    self.baseline_asked += 1;
                    self.baseline_pending.insert(trial.id, trial.clone());
                }
                EventKind::Ask { trial, state } => {
                    let adopt = |smbo: &mut Smbo| {
                        !self.verify && state.as_ref().is_some_and(|s| smbo.adopt(trial, s))
                    };
                    if self.own.front() == Some(trial) {
                        self.own.pop_front();
                    } else if !adopt(&mut self.smbo) {
                        match self.smbo.ask() {
                            Ask::Trial(t) if t == *trial => {}
                            Ask::Trial(t) => {
                                return Err(mismatch(format!(
                                    "trial {} in the log is not what the optimizer asks on replay (it asks trial {} at {} epochs)",
                                    trial.id, t.id, t.budget
                                )));
                            }
                            other => {
                                return Err(mismatch(format!(
                                    "trial {} is in the log but the optimizer answers {other:?} on replay",
                                    trial.id
                                )));
                            }
                        }
                    }
                }
                EventKind::Tell { line } => {
                    if line.baseline {
                        self.baseline_pending.remove(&line.id);
                    } else {
                        self.smbo
                            .tell(line.id, line.outcome())
                            .map_err(|e| mismatch(format!("trial {}: {e}", line.id)))?;
                    }
                    self.lines.push((**line).clone());
                }
            }
            self.since = e.seq;
        }
        Ok(())
    }

    /// Replays `events`, then decides what runs next.
    pub fn decide(&mut self, events: &[Event]) -> Result<Decision, String> {
        self.apply(events)?;
        if !self.own.is_empty() {
            // Own decisions not yet in the log: the caller replayed from a stale position.
            return Err(format!(
                "internal: {} decision(s) of this process are missing from the study's log",
                self.own.len()
            ));
        }
        match self.smbo.ask() {
            Ask::Trial(t) => {
                self.own.push_back(t.clone());
                let state = self.smbo.ask_state(t.id);
                Ok(Decision::Run(t, state))
            }
            Ask::Wait => Ok(Decision::Wait),
            Ask::Done => {
                // The baseline starts as soon as nothing new will be asked, beside the last
                // running trials, unless one of them is the default configuration (which may
                // reach the largest budget itself, or leave a further state to continue).
                let default_running = self.baseline.as_ref().is_some_and(|(d, _)| {
                    self.smbo
                        .records()
                        .iter()
                        .any(|r| r.outcome.is_none() && r.trial.config == *d)
                });
                if !default_running && let Some(t) = self.baseline_trial() {
                    self.own.push_back(t.clone());
                    return Ok(Decision::Run(t, None));
                }
                if self.smbo.pending() > 0 || !self.baseline_pending.is_empty() {
                    Ok(Decision::Wait)
                } else {
                    Ok(Decision::Done)
                }
            }
        }
    }

    /// The default configuration at the largest budget, continuing its furthest successful
    /// trial, when no successful trial of it reached that budget yet and the search measured
    /// something to compare with.
    fn baseline_trial(&mut self) -> Option<Trial> {
        let (default, max_budget) = self.baseline.clone()?;
        if self.baseline_asked > 0 || !self.lines.iter().any(TrialLine::measured) {
            return None;
        }
        let ok = |l: &&TrialLine| l.measured() && l.config == default;
        if self.lines.iter().filter(ok).any(|l| l.budget >= max_budget) {
            return None;
        }
        let continued: Vec<u64> = self.lines.iter().filter_map(|l| l.continued_from).collect();
        let continues = self
            .lines
            .iter()
            .filter(ok)
            .filter(|l| !continued.contains(&l.id))
            .max_by(|a, b| a.budget.total_cmp(&b.budget))
            .map(|l| l.id);
        Some(Trial {
            id: BASELINE_IDS + self.baseline_asked,
            config: default,
            budget: max_budget,
            continues,
        })
    }
}
