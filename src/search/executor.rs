//! The ask - evaluate - tell loop of one process, against the study store.
//!
//! The main thread alone talks to the store: it claims trials (the optimizer decides inside the
//! claim, under the study lock), hands them to local worker threads, and records what they
//! finish. A heartbeat thread with its own connection renews the leases held. On SIGINT or
//! SIGTERM (SLURM preemption) running trials are handed back at once and the process exits.
//!
//! Checkpoints: a promoted trial continues the saved state of its lower-budget trial, which may
//! have run on another machine: the state travels through the store (packed as a tar archive)
//! and is unpacked into this process's checkpoint folder before the trial starts. A running
//! trial's newest progress generation ([`crate::store::progress`]) goes to the store with the
//! lease's heartbeat, and once more when the process is interrupted, so that a trial queued
//! again (its worker went silent, or handed it back) continues where it got to.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::replica::Replica;
use super::workers::{CpuShare, ThreadClocks, cpu_threads};
use crate::error::Error;
use crate::eval::{Evaluation, Evaluator};
use crate::opt::{Outcome, Trial};
use crate::progress::EpochBar;
use crate::report::summary::StopReason;
use crate::report::{front_of, normalised_hypervolume};
use crate::store::{Claim, Lease, LeaseSettings, Owner, Store, TrialLine, progress};

/// When this process stops, besides the study being done.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub wall_time_s: Option<f64>,
    /// Energy and emissions of the study's trials (all processes), measured records only.
    pub energy_budget_kwh: Option<f64>,
    pub emissions_budget_kg: Option<f64>,
    /// Trials this process may finish.
    pub max_trials: Option<usize>,
}

/// Builds worker `w`'s evaluator (its CPU share, when the cores are split, and its progress bar).
pub type MakeEvaluator<'a> = dyn Fn(
        usize,
        Option<CpuShare>,
        Box<dyn crate::train::TrainObserver + 'a>,
    ) -> Result<Box<dyn Evaluator + 'a>, Error>
    + Sync
    + 'a;

/// Called with every trial the process learns of from the log (its own and others'), in log
/// order, and all lines so far: exports and the DSNN objective's training-energy memory.
pub type OnLine<'a> = dyn FnMut(&TrialLine, &[TrialLine]) -> Result<(), Error> + 'a;

/// A process's part in one study.
pub struct Executor<'a> {
    pub store: Box<dyn Store>,
    pub study: String,
    pub leases: LeaseSettings,
    pub replica: Replica,
    /// Local folder of saved states (`<trial id>/`).
    pub checkpoints: PathBuf,
    pub on_line: Box<OnLine<'a>>,
    /// Lines already passed to `on_line`.
    seen: usize,
}

/// Set by SIGINT / SIGTERM.
pub fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Without a handler the default (exit) applies: trials come back after the grace period.
        let _ = signal_hook::flag::register(sig, Arc::clone(&flag));
    }
    flag
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The measured (not op-count) energy and emissions of `lines`.
pub fn measured_energy(lines: &[TrialLine]) -> (f64, f64) {
    lines
        .iter()
        .flat_map(|l| &l.energy)
        .filter(|r| r.cpu.source != crate::energy::SourceKind::Opcount)
        .fold((0.0, 0.0), |(e, g), r| {
            (e + r.energy_kwh, g + r.emissions_kg)
        })
}

/// Whether process `pid` on this host is gone.
fn dead(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        // SAFETY: signal 0 checks existence only.
        let rc = unsafe { libc::kill(pid, 0) };
        rc == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        false
    }
}

/// Packs a saved state folder into bytes for the store.
fn pack(dir: &Path) -> Result<Vec<u8>, Error> {
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all(".", dir)
        .and_then(|()| b.into_inner())
        .map_err(|e| Error::Run {
            path: dir.to_path_buf(),
            message: format!("cannot pack the saved state: {e}"),
        })
}

/// Unpacks a saved state from the store into `dir`, atomically (a temporary folder renamed).
fn unpack(bytes: &[u8], dir: &Path) -> Result<(), Error> {
    let err = |e: std::io::Error| Error::Run {
        path: dir.to_path_buf(),
        message: format!("cannot unpack the saved state from the store: {e}"),
    };
    let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(err)?;
    tar::Archive::new(bytes).unpack(&tmp).map_err(err)?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&tmp, dir).map_err(err)
}

/// Saves the newest progress generation of the trial `lease` holds, when it is newer than the
/// last one saved. `true` when something was saved (which renews the lease too).
fn upload_progress(
    store: &mut dyn Store,
    lease: &Lease,
    checkpoints: &Path,
    uploaded: &Mutex<BTreeMap<u64, u64>>,
) -> bool {
    let id = lease.trial.id;
    let dir = progress::dir(checkpoints, id);
    let last = uploaded.lock().ok().and_then(|u| u.get(&id).copied());
    let Some((n, _)) = progress::newest(&dir) else {
        return false;
    };
    if last.is_some_and(|l| l >= n) {
        return false;
    }
    // A generation deleted while packing (the trial moved on) is packed next time.
    let Ok(Some((n, bytes))) = progress::pack_newest(&dir) else {
        return false;
    };
    match store.save_progress(lease, &bytes) {
        Ok(true) => {
            if let Ok(mut u) = uploaded.lock() {
                u.insert(id, n);
            }
            true
        }
        _ => false,
    }
}

/// Tells the heartbeat thread to stop when dropped.
struct StopOnDrop(Sender<()>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// A trial a worker finished (or could not run).
struct Finished {
    worker: usize,
    trial: Trial,
    result: Result<Evaluation, Error>,
    wall_s: f64,
}

impl<'a> Executor<'a> {
    pub fn new(
        store: Box<dyn Store>,
        study: String,
        leases: LeaseSettings,
        replica: Replica,
        checkpoints: PathBuf,
        on_line: Box<OnLine<'a>>,
    ) -> Executor<'a> {
        Executor {
            store,
            study,
            leases,
            replica,
            checkpoints,
            on_line,
            seen: 0,
        }
    }

    /// Replays the log's new events and passes new lines on.
    pub fn sync(&mut self) -> Result<(), Error> {
        let events = self.store.events(&self.study, self.replica.since)?;
        self.replica.apply(&events).map_err(|m| self.err(m))?;
        self.pass_lines()
    }

    fn pass_lines(&mut self) -> Result<(), Error> {
        while self.seen < self.replica.lines.len() {
            let line = &self.replica.lines[self.seen];
            (self.on_line)(line, &self.replica.lines[..=self.seen])?;
            self.seen += 1;
        }
        Ok(())
    }

    fn err(&self, message: String) -> Error {
        Error::Run {
            path: PathBuf::from(format!("study \"{}\" in {}", self.study, self.store.url())),
            message,
        }
    }

    /// Hands back the running trials of processes on this host that are gone (killed), so they
    /// run again at once instead of after the grace period.
    pub fn requeue_dead_local(&mut self) -> Result<usize, Error> {
        let me = Owner::this_process("");
        let mut n = 0;
        for r in self.store.running(&self.study)? {
            let o = &r.lease.owner;
            if o.host == me.host
                && o.pid != me.pid
                && dead(o.pid)
                && self.store.release(&r.lease)?
            {
                n += 1;
            }
        }
        Ok(n)
    }

    fn claim(&mut self, owner: &Owner) -> Result<Claim, Error> {
        let replica = &mut self.replica;
        let claim = self
            .store
            .claim(&self.study, owner, replica.since, &mut |events| {
                replica.decide(events)
            })?;
        self.pass_lines()?;
        Ok(claim)
    }

    /// Brings the saved state a trial continues into the local folder, when the store has it,
    /// and the progress an earlier attempt of it saved.
    fn fetch_state(&mut self, lease: &Lease) -> Result<(), Error> {
        let trial = &lease.trial;
        // The store says how far earlier attempts got; anything already in the local folder
        // (left by a killed process in a folder given again) is not this attempt's to continue.
        let dir = progress::dir(&self.checkpoints, trial.id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::Run {
                path: dir.clone(),
                message: format!("cannot clear an earlier attempt's progress: {e}"),
            })?;
        }
        if lease.attempt > 1
            && let Some(bytes) = self.store.progress(&self.study, trial.id)?
        {
            progress::unpack(&bytes, &dir).map_err(|e| Error::Run {
                path: dir.clone(),
                message: format!("cannot unpack the trial's progress from the store: {e}"),
            })?;
        }
        let Some(from) = trial.continues else {
            return Ok(());
        };
        let dir = self.checkpoints.join(from.to_string());
        if dir.join("state.json").exists() {
            return Ok(());
        }
        if let Some(bytes) = self.store.checkpoint(&self.study, from)? {
            std::fs::create_dir_all(&self.checkpoints).map_err(|e| Error::Run {
                path: self.checkpoints.clone(),
                message: e.to_string(),
            })?;
            unpack(&bytes, &dir)?;
        }
        Ok(())
    }

    /// Works on the study with `workers` local threads until it is done or a limit is reached.
    pub fn run(
        &mut self,
        make: &MakeEvaluator<'a>,
        workers: usize,
        split_cores: bool,
        limits: &Limits,
        multi: Option<MultiProgress>,
        interrupted: &AtomicBool,
    ) -> Result<StopReason, Error> {
        let started = Instant::now();
        let workers = workers.max(1);
        let owners: Vec<Owner> = (0..workers)
            .map(|w| Owner::this_process(format!("worker {w}")))
            .collect();
        let held: Arc<Mutex<BTreeMap<u64, Lease>>> = Arc::default();
        let main_bar = multi.as_ref().map(|m| {
            let bar = m.add(ProgressBar::new_spinner());
            if let Ok(style) = ProgressStyle::with_template("trials {pos}  {msg}  ({elapsed})") {
                bar.set_style(style);
            }
            bar
        });
        let mut heart = self.store.connect_again()?;
        let (beat_stop_tx, beat_stop_rx) = mpsc::channel::<()>();
        // Dropped on every way out of the loop below, which stops the heartbeat thread.
        let beat_stop = StopOnDrop(beat_stop_tx);
        let mut finished_here = 0usize;
        let mut stop = StopReason::TrialsDone;
        let mut fatal: Option<Error> = None;
        let (done_tx, done_rx) = mpsc::channel::<Finished>();
        let period = Duration::from_secs_f64(self.leases.heartbeat_s);
        let uploaded: Arc<Mutex<BTreeMap<u64, u64>>> = Arc::default();
        let result = std::thread::scope(|s| -> Result<(), Error> {
            {
                let held = Arc::clone(&held);
                let uploaded = Arc::clone(&uploaded);
                let checkpoints = self.checkpoints.clone();
                s.spawn(move || {
                    while let Err(RecvTimeoutError::Timeout) = beat_stop_rx.recv_timeout(period) {
                        let leases: Vec<Lease> = held
                            .lock()
                            .map(|h| h.values().cloned().collect())
                            .unwrap_or_default();
                        for l in leases {
                            // A lost lease shows at finish (refused); a store out of reach for a
                            // while is judged by the grace period. Saving progress renews too.
                            if !upload_progress(&mut *heart, &l, &checkpoints, &uploaded) {
                                let _ = heart.heartbeat(&l);
                            }
                        }
                    }
                });
            }
            let mut jobs = Vec::with_capacity(workers);
            for w in 0..workers {
                let (tx, rx) = mpsc::channel::<Trial>();
                jobs.push(tx);
                let done = done_tx.clone();
                let multi = multi.clone();
                s.spawn(move || run_worker(make, w, workers, split_cores, multi, rx, done));
            }
            drop(done_tx);
            let mut idle: Vec<usize> = (0..workers).rev().collect();
            let mut running: BTreeMap<u64, String> = BTreeMap::new();
            let mut stopping = false;
            let mut wait = Duration::from_millis(100);
            loop {
                if interrupted.load(Ordering::Relaxed) {
                    stop = StopReason::Interrupted;
                    break;
                }
                let mut waiting = false;
                while !stopping && !idle.is_empty() {
                    let (kwh, kg) = measured_energy(&self.replica.lines);
                    let reason = if limits
                        .wall_time_s
                        .is_some_and(|l| started.elapsed().as_secs_f64() >= l)
                    {
                        Some(StopReason::WallTime)
                    } else if limits.energy_budget_kwh.is_some_and(|b| kwh >= b) {
                        Some(StopReason::EnergyBudget)
                    } else if limits.emissions_budget_kg.is_some_and(|b| kg >= b) {
                        Some(StopReason::EmissionsBudget)
                    } else if limits
                        .max_trials
                        .is_some_and(|m| finished_here + running.len() >= m)
                    {
                        Some(StopReason::MaxTrials)
                    } else {
                        None
                    };
                    if let Some(r) = reason {
                        stop = r;
                        stopping = true;
                        break;
                    }
                    let Some(&w) = idle.last() else { break };
                    // A store error stops this process after the running trials finish; what it
                    // holds is handed back below.
                    let claim = match self.claim(&owners[w]) {
                        Ok(c) => c,
                        Err(e) => {
                            fatal.get_or_insert(e);
                            stopping = true;
                            break;
                        }
                    };
                    let lease = match claim {
                        Claim::Run(lease) => lease,
                        Claim::Wait => {
                            waiting = true;
                            break;
                        }
                        Claim::Done => {
                            stopping = true;
                            break;
                        }
                    };
                    wait = Duration::from_millis(100);
                    let trial = lease.trial.clone();
                    if let Err(e) = self.fetch_state(&lease) {
                        let _ = self.store.release(&lease);
                        fatal.get_or_insert(e);
                        stopping = true;
                        break;
                    }
                    let label = format!(
                        "{} ({} ep{}{})",
                        trial.id,
                        trial.epochs(),
                        trial
                            .continues
                            .map(|p| format!(" from {p}"))
                            .unwrap_or_default(),
                        if lease.attempt > 1 {
                            format!(", attempt {}", lease.attempt)
                        } else {
                            String::new()
                        }
                    );
                    idle.pop();
                    if let Ok(mut h) = held.lock() {
                        h.insert(trial.id, lease);
                    }
                    let id = trial.id;
                    if jobs[w].send(trial).is_err() {
                        fatal.get_or_insert_with(|| self.err(format!("worker {w} stopped")));
                        stopping = true;
                        break;
                    }
                    running.insert(id, label);
                }
                if let Some(bar) = &main_bar {
                    let front = front_of(&self.replica.lines);
                    let (kwh, _) = measured_energy(&self.replica.lines);
                    bar.set_position(self.replica.lines.len() as u64);
                    bar.set_message(format!(
                        "running {}  front {}  HV {:.3}  energy {:.2e} kWh",
                        running.values().cloned().collect::<Vec<_>>().join(", "),
                        front.len(),
                        normalised_hypervolume(&self.replica.lines, &front),
                        kwh
                    ));
                }
                if running.is_empty() && (stopping || !waiting) {
                    break;
                }
                // The optimizer waits for pending trials (here or elsewhere): ask again later,
                // backing off to the heartbeat period (stale trials are re-queued in the claims).
                let timeout = if waiting {
                    let t = wait;
                    wait = (wait * 2).min(period.max(Duration::from_millis(200)));
                    t
                } else {
                    Duration::from_millis(200)
                };
                let f = match done_rx.recv_timeout(timeout) {
                    Ok(f) => f,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => break,
                };
                idle.push(f.worker);
                running.remove(&f.trial.id);
                let lease = held.lock().ok().and_then(|mut h| h.remove(&f.trial.id));
                let Some(lease) = lease else { continue };
                match self.record(&lease, f) {
                    Ok(true) => finished_here += 1,
                    Ok(false) => {
                        let msg = format!(
                            "trial {}: result refused: its lease was taken away (silent longer than {} s); the trial runs again elsewhere",
                            lease.trial.id, self.leases.grace_s
                        );
                        match &multi {
                            Some(m) => {
                                let _ = m.println(msg);
                            }
                            None => eprintln!("dsnn-hpo: {msg}"),
                        }
                    }
                    Err(e) => {
                        // The run cannot go on (I/O, meters); finish what is running, then stop.
                        // The trial goes back to the study for a worker that can run it.
                        let _ = self.store.release(&lease);
                        fatal.get_or_insert(e);
                        stopping = true;
                    }
                }
            }
            drop(beat_stop);
            // Hand back what is still running (interrupted, or an error): others take it now.
            let leases: Vec<Lease> = held
                .lock()
                .map(|h| h.values().cloned().collect())
                .unwrap_or_default();
            for l in &leases {
                // What the trial got to goes with it, for whoever runs it next.
                upload_progress(&mut *self.store, l, &self.checkpoints, &uploaded);
                let _ = self.store.release(l);
            }
            if stop == StopReason::Interrupted && !running.is_empty() {
                let _ = self.sync();
                eprintln!(
                    "dsnn-hpo: interrupted: {} running trial(s) handed back to the study",
                    leases.len()
                );
                // The workers' trainings cannot be stopped from here: the process ends with them.
                // Everything finished is in the store and the exports.
                std::process::exit(130);
            }
            drop(jobs);
            Ok(())
        });
        if let Some(bar) = main_bar {
            bar.finish_and_clear();
        }
        result?;
        if let Some(e) = fatal {
            return Err(e);
        }
        self.sync()?;
        Ok(stop)
    }

    /// Records a finished trial with its saved state. `false`: refused (the lease was lost).
    fn record(&mut self, lease: &Lease, f: Finished) -> Result<bool, Error> {
        let Evaluation {
            outcome,
            metrics,
            energy,
            per_layer,
        } = f.result?;
        let outcome = match outcome {
            Outcome::Success { objectives } | Outcome::Infeasible { objectives, .. }
                if objectives.iter().any(|v| !v.is_finite()) =>
            {
                Outcome::Failed {
                    reason: format!("objective values {objectives:?} are not finite"),
                }
            }
            o => o,
        };
        let mut line = TrialLine::of(&f.trial, &outcome, metrics, energy, f.wall_s, now_unix());
        line.per_layer = per_layer;
        // The trial has its result: its progress is of no further use here.
        let _ = std::fs::remove_dir_all(progress::dir(&self.checkpoints, f.trial.id));
        let dir = self.checkpoints.join(f.trial.id.to_string());
        let state = if dir.join("state.json").exists() {
            Some(pack(&dir)?)
        } else {
            None
        };
        let accepted = self.store.finish(lease, &line, state.as_deref())?;
        if let Some(from) = f.trial.continues.filter(|_| accepted) {
            let _ = std::fs::remove_dir_all(self.checkpoints.join(from.to_string()));
        }
        Ok(accepted)
    }
}

/// Worker `w`: evaluates the trials it is sent until the sender hangs up. With several workers
/// on the CPU it runs inside its own rayon pool, so burn's kernels use only its cores.
fn run_worker<'a>(
    make: &MakeEvaluator<'a>,
    w: usize,
    workers: usize,
    split_cores: bool,
    multi: Option<MultiProgress>,
    jobs: Receiver<Trial>,
    done: Sender<Finished>,
) {
    let clocks = ThreadClocks::default();
    let body = move |clocks: ThreadClocks| {
        let share = if workers > 1 {
            match CpuShare::new(clocks) {
                Ok(s) => Some(s),
                Err(e) => return fail_first(w, &jobs, &done, e.into()),
            }
        } else {
            None
        };
        let observer: Box<dyn crate::train::TrainObserver> = match &multi {
            Some(m) => Box::new(EpochBar::new(m.clone(), false)),
            None => Box::new(crate::train::Quiet),
        };
        let mut eval = match make(w, share, observer) {
            Ok(r) => r,
            Err(e) => return fail_first(w, &jobs, &done, e),
        };
        while let Ok(trial) = jobs.recv() {
            let t0 = Instant::now();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                eval.evaluate_fully(&trial)
            }))
            .unwrap_or_else(|panic| {
                // A crash inside the training stack is this trial's failure, not the run's.
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Ok(Evaluation::of(Outcome::Failed {
                    reason: format!("crashed: {what}"),
                }))
            })
            .map_err(|e| Error::Run {
                path: PathBuf::from("[objective]"),
                message: e.to_string(),
            });
            let f = Finished {
                worker: w,
                trial,
                result,
                wall_s: t0.elapsed().as_secs_f64(),
            };
            if done.send(f).is_err() {
                break;
            }
        }
    };
    // A pool that cannot be built (no threads left) leaves the worker on the global pool.
    let pool = (workers > 1 && split_cores)
        .then(|| {
            let c = clocks.clone();
            rayon::ThreadPoolBuilder::new()
                .num_threads(cpu_threads(workers))
                .thread_name(move |i| format!("worker{w}-{i}"))
                .start_handler(move |_| c.register_current())
                .build()
                .ok()
        })
        .flatten();
    match pool {
        Some(pool) => pool.install(move || body(clocks)),
        None => {
            clocks.register_current();
            body(clocks);
        }
    }
}

/// Hands back the first trial a worker that could not start receives, with the reason.
fn fail_first(w: usize, jobs: &Receiver<Trial>, done: &Sender<Finished>, e: Error) {
    if let Ok(trial) = jobs.recv() {
        let _ = done.send(Finished {
            worker: w,
            trial,
            result: Err(e),
            wall_s: 0.0,
        });
    }
}
