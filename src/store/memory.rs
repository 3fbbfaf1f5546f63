//! The in-memory store: the reference the conformance suite holds every backend to, and the
//! baseline of the store overhead benchmark. Shared by the connections of one process only.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::trials::{self, State, TrialState, Trials, now};
use super::{
    Claim, Decide, Decision, Event, EventKind, Lease, NewStudy, Owner, Running, Store, StoreError,
    StudyRecord, TrialLine, known_studies, new_token,
};
use crate::opt::Trial;

#[derive(Debug, Default)]
struct StudyState {
    events: Vec<Event>,
    trials: Trials,
    checkpoints: BTreeMap<u64, Vec<u8>>,
    progress: BTreeMap<u64, Vec<u8>>,
}

#[derive(Debug, Default)]
struct Inner {
    studies: Vec<(StudyRecord, StudyState)>,
    next_seq: u64,
}

/// Connections share one `Inner`; the mutex is the study lock.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

const URL: &str = "memory://";

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        self.inner.lock().map_err(|_| StoreError::Backend {
            url: URL.into(),
            message: "a thread panicked while holding the store".into(),
        })
    }
}

impl Inner {
    fn study_mut(&mut self, name: &str) -> Result<&mut (StudyRecord, StudyState), StoreError> {
        match self.studies.iter().position(|(r, _)| r.study.name == name) {
            Some(i) => Ok(&mut self.studies[i]),
            None => Err(StoreError::NoSuchStudy {
                url: URL.into(),
                name: name.into(),
                known: known_studies(self.studies.iter().map(|(r, _)| r.study.name.as_str())),
            }),
        }
    }

    fn push(&mut self, study: &str, kind: EventKind) -> Result<(), StoreError> {
        self.next_seq += 1;
        let seq = self.next_seq;
        self.study_mut(study)?.1.events.push(Event { seq, kind });
        Ok(())
    }
}

impl Store for MemoryStore {
    fn url(&self) -> String {
        URL.into()
    }

    fn connect_again(&self) -> Result<Box<dyn Store>, StoreError> {
        Ok(Box::new(self.clone()))
    }

    fn create_study(&mut self, study: &NewStudy) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        if inner
            .studies
            .iter()
            .any(|(r, _)| r.study.name == study.name)
        {
            return Err(StoreError::StudyExists {
                url: URL.into(),
                name: study.name.clone(),
                hint: "choose another name".into(),
            });
        }
        inner.studies.push((
            StudyRecord {
                study: study.clone(),
                created_unix_s: now(),
            },
            StudyState::default(),
        ));
        Ok(())
    }

    fn study(&mut self, name: &str) -> Result<StudyRecord, StoreError> {
        Ok(self.lock()?.study_mut(name)?.0.clone())
    }

    fn studies(&mut self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .lock()?
            .studies
            .iter()
            .map(|(r, _)| r.study.name.clone())
            .collect())
    }

    fn claim(
        &mut self,
        study: &str,
        owner: &Owner,
        since: u64,
        decide: &mut Decide<'_>,
    ) -> Result<Claim, StoreError> {
        let mut inner = self.lock()?;
        let t = now();
        // Take away silent leases, remembering what changed: a failing `decide` undoes it all.
        let seq_before = inner.next_seq;
        let (rec, s) = inner.study_mut(study)?;
        let leases = rec.study.leases;
        let events_before = s.events.len();
        let mut undo = Vec::new();
        let mut failed = Vec::new();
        for (id, ts) in s.trials.iter_mut() {
            if let State::Running {
                heartbeat_at,
                owner,
                ..
            } = &ts.state
                && t - heartbeat_at > leases.grace_s
            {
                undo.push((*id, ts.clone()));
                ts.stale += 1;
                if ts.stale > leases.max_retries {
                    failed.push(TrialLine::failed_silent(&ts.trial, ts.stale, owner, t));
                    ts.state = State::Done;
                } else {
                    ts.state = State::Queued;
                }
            }
        }
        for line in failed {
            inner.push(
                study,
                EventKind::Tell {
                    line: Box::new(line),
                },
            )?;
        }
        let rollback = |inner: &mut Inner, undo: Vec<(u64, TrialState)>| {
            inner.next_seq = seq_before;
            if let Ok((_, s)) = inner.study_mut(study) {
                s.events.truncate(events_before);
                s.trials.extend(undo);
            }
        };
        let (_, s) = inner.study_mut(study)?;
        let queued = s
            .trials
            .values_mut()
            .find(|ts| matches!(ts.state, State::Queued));
        if let Some(ts) = queued {
            let token = new_token();
            ts.attempt += 1;
            ts.state = State::Running {
                token: token.clone(),
                owner: owner.clone(),
                heartbeat_at: t,
            };
            return Ok(Claim::Run(Lease {
                study: study.into(),
                trial: ts.trial.clone(),
                attempt: ts.attempt,
                token,
                owner: owner.clone(),
            }));
        }
        let events: Vec<Event> = s.events.iter().filter(|e| e.seq > since).cloned().collect();
        let decision = match decide(&events) {
            Ok(Decision::Run(trial, _)) if s.trials.contains_key(&trial.id) => Err(format!(
                "the optimizer asked for trial {} again (it was asked before)",
                trial.id
            )),
            other => other,
        };
        match decision {
            Err(message) => {
                rollback(&mut inner, undo);
                Err(StoreError::Decide(message))
            }
            Ok(Decision::Wait) => Ok(Claim::Wait),
            Ok(Decision::Done) => Ok(Claim::Done),
            Ok(Decision::Run(trial, state)) => {
                let token = new_token();
                inner.push(
                    study,
                    EventKind::Ask {
                        trial: trial.clone(),
                        state,
                    },
                )?;
                let (_, s) = inner.study_mut(study)?;
                s.trials.insert(
                    trial.id,
                    TrialState {
                        trial: trial.clone(),
                        state: State::Running {
                            token: token.clone(),
                            owner: owner.clone(),
                            heartbeat_at: t,
                        },
                        attempt: 1,
                        stale: 0,
                    },
                );
                Ok(Claim::Run(Lease {
                    study: study.into(),
                    trial,
                    attempt: 1,
                    token,
                    owner: owner.clone(),
                }))
            }
        }
    }

    fn heartbeat(&mut self, lease: &Lease) -> Result<bool, StoreError> {
        let mut inner = self.lock()?;
        let (_, s) = inner.study_mut(&lease.study)?;
        if !trials::holds(&s.trials, lease) {
            return Ok(false);
        }
        if let Some(TrialState {
            state: State::Running { heartbeat_at, .. },
            ..
        }) = s.trials.get_mut(&lease.trial.id)
        {
            *heartbeat_at = now();
        }
        Ok(true)
    }

    fn finish(
        &mut self,
        lease: &Lease,
        line: &TrialLine,
        checkpoint: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock()?;
        let (_, s) = inner.study_mut(&lease.study)?;
        if !trials::holds(&s.trials, lease) {
            return Ok(false);
        }
        if let Some(ts) = s.trials.get_mut(&lease.trial.id) {
            ts.state = State::Done;
        }
        if let Some(bytes) = checkpoint {
            s.checkpoints.insert(lease.trial.id, bytes.to_vec());
        }
        if let Some(from) = line.continued_from {
            s.checkpoints.remove(&from);
        }
        s.progress.remove(&lease.trial.id);
        inner.push(
            &lease.study,
            EventKind::Tell {
                line: Box::new(line.clone()),
            },
        )?;
        Ok(true)
    }

    fn release(&mut self, lease: &Lease) -> Result<bool, StoreError> {
        let mut inner = self.lock()?;
        let (_, s) = inner.study_mut(&lease.study)?;
        if !trials::holds(&s.trials, lease) {
            return Ok(false);
        }
        if let Some(ts) = s.trials.get_mut(&lease.trial.id) {
            ts.state = State::Queued;
        }
        Ok(true)
    }

    fn events(&mut self, study: &str, since: u64) -> Result<Vec<Event>, StoreError> {
        let mut inner = self.lock()?;
        let (_, s) = inner.study_mut(study)?;
        Ok(s.events.iter().filter(|e| e.seq > since).cloned().collect())
    }

    fn running(&mut self, study: &str) -> Result<Vec<Running>, StoreError> {
        let mut inner = self.lock()?;
        let (_, s) = inner.study_mut(study)?;
        Ok(trials::running(&s.trials, study, now()))
    }

    fn queued(&mut self, study: &str) -> Result<Vec<Trial>, StoreError> {
        let mut inner = self.lock()?;
        let (_, s) = inner.study_mut(study)?;
        Ok(trials::queued(&s.trials))
    }

    fn checkpoint(&mut self, study: &str, trial: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let mut inner = self.lock()?;
        Ok(inner.study_mut(study)?.1.checkpoints.get(&trial).cloned())
    }

    fn save_progress(&mut self, lease: &Lease, progress: &[u8]) -> Result<bool, StoreError> {
        let mut inner = self.lock()?;
        let (_, s) = inner.study_mut(&lease.study)?;
        if !trials::holds(&s.trials, lease) {
            return Ok(false);
        }
        s.progress.insert(lease.trial.id, progress.to_vec());
        Ok(true)
    }

    fn progress(&mut self, study: &str, trial: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let mut inner = self.lock()?;
        Ok(inner.study_mut(study)?.1.progress.get(&trial).cloned())
    }

    fn drop_checkpoints(&mut self, study: &str) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        let (_, s) = inner.study_mut(study)?;
        s.checkpoints.clear();
        s.progress.clear();
        Ok(())
    }

    fn import(&mut self, study: &str, events: &[EventKind]) -> Result<(), StoreError> {
        let mut inner = self.lock()?;
        inner.study_mut(study)?;
        for kind in events {
            inner.push(study, kind.clone())?;
            let (_, s) = inner.study_mut(study)?;
            trials::apply(&mut s.trials, kind);
        }
        Ok(())
    }
}
