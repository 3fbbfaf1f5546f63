//! A search: the study in its store, the processes working on it, and the run directory's
//! exports.
//!
//! `dsnn-hpo optimize` creates (or reopens) a study, works on it with `[search] workers` local
//! threads, and keeps the run directory's files (`run.json`, `trials.jsonl`, the front files,
//! `emissions.csv`, `summary.json`) as exports of the store. `dsnn-hpo worker` joins an existing
//! study from another process or machine; it needs the store's URL, not the TOML file.
//!
//! The store is the one source of truth: a killed process loses no finished trial, and its
//! running trials run again (at once when the process was on this host, else after the study's
//! grace period).

pub mod executor;
pub mod replica;
pub mod wiring;
pub mod workers;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use indicatif::MultiProgress;

use crate::config::RunConfig;
use crate::constraint::Constraints;
use crate::data::LoadedData;
use crate::device::DeviceChoice;
use crate::energy::{CsvSink, EnergyTracker};
use crate::error::Error;
use crate::eval::Evaluator;
use crate::eval::dsnn::{DsnnObjective, TrainingEnergy};
use crate::eval::problems::ProblemEvaluator;
use crate::opt::{Ask, Smbo};
use crate::report::export::write_front;
use crate::report::summary::{StopReason, Summary};
use crate::report::{front_of, normalised_hypervolume};
use crate::store::{
    self, EventKind, JsonlLog, LeaseSettings, NewStudy, RunInfo, StoreError, StudyRecord,
    TrialLine, TrialStatus,
};
use executor::{Executor, Limits, MakeEvaluator, interrupt_flag, measured_energy};
use replica::Replica;
use wiring::{
    build_optimizer, command_objective, constraints_of, known_constraint, meta_hash, problem_of,
    run_err, search_space,
};
use workers::worker_device;

/// How the optimize command was asked to run.
pub struct OptimizeOptions {
    pub run_dir: PathBuf,
    pub resume: bool,
    pub quiet: bool,
    /// Where the configuration came from, for error messages.
    pub config_path: PathBuf,
}

/// The study store's file inside a run directory, when `[study] storage` names none.
pub const EMBEDDED_DB: &str = "study.db";

/// The store URL and study name a configuration uses (the embedded default inside `dir`).
pub fn study_location(cfg: &RunConfig, dir: &Path) -> (String, String) {
    let url = cfg
        .study
        .storage
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.join(EMBEDDED_DB).display()));
    let name = cfg
        .study
        .name
        .clone()
        .or_else(|| cfg.name.clone())
        .unwrap_or_else(|| "study".into());
    (url, name)
}

/// What a configuration gives every process of a study: its data (DSNN objectives), search
/// space, energy meter and device.
struct Setup {
    data: Option<LoadedData>,
    space: crate::space::SearchSpace,
    tracker: EnergyTracker,
    /// `None` for a command objective or test problem.
    device: Option<DeviceChoice>,
}

impl Setup {
    fn of(cfg: &RunConfig, source: &Path) -> Result<Setup, Error> {
        let is_dsnn = cfg.objective.kind == crate::config::ObjectiveKind::Dsnn;
        let data = if is_dsnn {
            Some(cfg.data.load()?)
        } else {
            None
        };
        let space = search_space(cfg, data.as_ref(), source)?;
        Ok(Setup {
            data,
            space,
            tracker: EnergyTracker::from_config(&cfg.energy)?,
            device: if is_dsnn {
                Some(cfg.device.parse()?)
            } else {
                None
            },
        })
    }
}

/// Everything a process needs to evaluate trials of a study.
struct Objective<'a> {
    cfg: &'a RunConfig,
    data: Option<&'a LoadedData>,
    tracker: &'a EnergyTracker,
    checkpoints: PathBuf,
    config_path: &'a Path,
    workers: usize,
    /// `None` for a command objective or test problem.
    device: Option<DeviceChoice>,
    training_energy: TrainingEnergy,
    constraints: Constraints,
}

impl<'a> Objective<'a> {
    /// Worker `w`'s evaluator.
    fn evaluator(
        &self,
        w: usize,
        share: Option<workers::CpuShare>,
        observer: Box<dyn crate::train::TrainObserver + 'a>,
    ) -> Result<Box<dyn Evaluator + 'a>, Error> {
        match (self.data, self.device) {
            (Some(data), Some(device)) => {
                let device = worker_device(device, w, self.workers).device()?;
                let mut d = DsnnObjective::new(
                    self.cfg.train.clone(),
                    data,
                    device,
                    self.tracker,
                    self.cfg.objectives.clone(),
                    self.cfg.fidelity.max_epochs as usize,
                    self.checkpoints.clone(),
                    observer,
                    self.cfg.energy.opcount.clone(),
                )
                .with_training_energy(self.training_energy.clone());
                d.share = share;
                d.repeat = self.cfg.energy.repeat();
                d.per_layer = self.cfg.energy.per_layer;
                d.constraints = self.constraints.clone();
                Ok(Box::new(d))
            }
            _ => Ok(match problem_of(self.cfg) {
                Some(problem) => Box::new(ProblemEvaluator { problem }),
                None => Box::new(command_objective(
                    self.cfg,
                    self.config_path,
                    &self.checkpoints,
                )?),
            }),
        }
    }

    /// What the study's records mean: the objectives' names and sources (from an evaluator that
    /// evaluates nothing), the default configuration and the settings' hash.
    fn run_info(
        &self,
        default_config: &crate::space::Config,
        hash: String,
    ) -> Result<RunInfo, Error> {
        let probe = self.evaluator(0, None, Box::new(crate::train::Quiet))?;
        Ok(RunInfo {
            objectives: probe.objective_names(),
            objective_sources: probe.objective_sources(),
            default_config: default_config.clone(),
            meta_hash: hash,
            config_toml: toml::to_string(self.cfg).unwrap_or_default(),
            constraint_reference: self.constraints.reference.clone(),
        })
    }

    fn on_gpu(&self) -> bool {
        self.device.is_some_and(DeviceChoice::is_gpu)
    }

    /// Works on the study with this process's workers until it is done, a limit is reached or a
    /// signal comes.
    fn work(
        &'a self,
        exec: &mut Executor<'a>,
        limits: &Limits,
        multi: Option<MultiProgress>,
    ) -> Result<StopReason, Error> {
        let interrupted = interrupt_flag();
        let make: &MakeEvaluator<'a> = &|w, share, observer| self.evaluator(w, share, observer);
        exec.run(
            make,
            self.workers,
            !self.on_gpu(),
            limits,
            multi,
            &interrupted,
        )
    }

    /// Remembers a finished trial's training energy, its continued-from trials' included.
    fn remember_training(&self, line: &TrialLine, lines: &[TrialLine]) {
        let Some(r) = line.energy.iter().find(|r| r.phase == "train") else {
            return;
        };
        let Ok(mut m) = self.training_energy.lock() else {
            return;
        };
        let (pk, pg) = line
            .continued_from
            .and_then(|p| m.get(&p).copied())
            .or_else(|| {
                line.continued_from
                    .and_then(|p| lines.iter().find(|l| l.id == p))
                    .and_then(|l| l.energy.iter().find(|r| r.phase == "train"))
                    .map(|r| (r.energy_kwh, r.emissions_kg))
            })
            .unwrap_or((0.0, 0.0));
        m.insert(line.id, (r.energy_kwh + pk, r.emissions_kg + pg));
    }
}

/// A study as a configuration describes it.
fn new_study(cfg: &RunConfig, name: &str, info: RunInfo, data: Option<&LoadedData>) -> NewStudy {
    NewStudy {
        name: name.to_string(),
        info,
        leases: LeaseSettings {
            heartbeat_s: cfg.study.heartbeat_s,
            grace_s: cfg.study.grace_s,
            max_retries: cfg.study.max_retries,
        },
        data_fingerprint: data.map(LoadedData::fingerprint),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Creates the study a configuration describes in `storage` without working on it
/// (`dsnn-hpo study create`); workers join it with `dsnn-hpo worker`.
pub fn create_study(
    cfg: &RunConfig,
    config_path: &Path,
    storage: &str,
    name: &str,
) -> Result<StudyRecord, Error> {
    let mut store = store::open(storage)?;
    let Setup {
        data,
        space,
        tracker,
        device,
    } = Setup::of(cfg, config_path)?;
    let default_config = space.default_config();
    let constraints = match (&data, device) {
        (Some(data), Some(device)) if !cfg.constraints.is_empty() => {
            constraints_of(cfg, data, &default_config, None, &tracker, device)?
        }
        _ => Constraints::default(),
    };
    let objective = Objective {
        cfg,
        data: data.as_ref(),
        tracker: &tracker,
        checkpoints: std::env::temp_dir(),
        config_path,
        workers: 1,
        device,
        training_energy: Arc::default(),
        constraints,
    };
    let info = objective.run_info(&default_config, meta_hash(cfg)?)?;
    // The optimizer must accept the configuration before anyone works on it.
    optimizer_of(
        cfg,
        space,
        info.objectives.len(),
        data.as_ref(),
        &objective.constraints,
        config_path,
    )?;
    store.create_study(&new_study(cfg, name, info, data.as_ref()))?;
    Ok(store.study(name)?)
}

/// The optimizer a study's configuration describes, with its known-ahead constraint.
fn optimizer_of(
    cfg: &RunConfig,
    space: crate::space::SearchSpace,
    n_objectives: usize,
    data: Option<&LoadedData>,
    constraints: &Constraints,
    source: &Path,
) -> Result<Smbo, Error> {
    let mut smbo = build_optimizer(cfg, space, n_objectives, source)?;
    if let Some(data) = data
        && let Some(known) = known_constraint(cfg, data, constraints)
    {
        smbo = smbo.with_known_constraint(known);
    }
    Ok(smbo)
}

/// The events of a run directory written by the previous release (`asks.jsonl` and
/// `trials.jsonl`), replayed through the optimizer so that the trials asked but never finished
/// are known in full.
fn legacy_events(dir: &Path, mut smbo: Smbo) -> Result<Vec<EventKind>, Error> {
    let lines = store::read_trials(dir)?;
    let tells: Vec<&TrialLine> = lines.iter().filter(|l| !l.baseline).collect();
    let mut asks = store::read_asks(dir)?;
    if asks.is_empty() {
        asks = tells
            .iter()
            .enumerate()
            .map(|(told, l)| store::AskLine { id: l.id, told })
            .collect();
    }
    let mismatch = |what: String| {
        run_err(
            dir,
            format!("{what}; the log belongs to another configuration or version"),
        )
    };
    let mut events = Vec::new();
    let (mut told, mut next_ask) = (0usize, 0usize);
    loop {
        if let Some(a) = asks.get(next_ask).filter(|a| a.told <= told) {
            match smbo.ask() {
                Ask::Trial(t) if t.id == a.id => {
                    events.push(EventKind::Ask {
                        state: smbo.ask_state(t.id),
                        trial: t,
                    });
                    next_ask += 1;
                }
                _ => {
                    return Err(mismatch(format!(
                        "asks.jsonl: trial {} is not what the optimizer asks on replay",
                        a.id
                    )));
                }
            }
        } else if let Some(line) = tells.get(told) {
            smbo.tell(line.id, line.outcome())
                .map_err(|e| mismatch(format!("trials.jsonl: {e}")))?;
            events.push(EventKind::Tell {
                line: Box::new((*line).clone()),
            });
            told += 1;
        } else {
            break;
        }
    }
    // Baseline trials were never asked: recorded as asked and finished.
    for line in lines.iter().filter(|l| l.baseline) {
        events.push(EventKind::Ask {
            trial: line.trial(),
            state: None,
        });
        events.push(EventKind::Tell {
            line: Box::new(line.clone()),
        });
    }
    Ok(events)
}

/// The run directory's exports, written from the store as lines arrive.
struct Exports {
    dir: PathBuf,
    info: RunInfo,
    log: JsonlLog,
    csv: CsvSink,
}

impl Exports {
    /// Rewrites the exports from the lines the store holds, then appends from there.
    fn open(
        dir: &Path,
        info: RunInfo,
        csv_run: crate::energy::RunInfo,
        lines: &[TrialLine],
    ) -> Result<Exports, Error> {
        store::write_run_info(dir, &info)?;
        store::write_trials(dir, lines)?;
        let csv_path = dir.join("emissions.csv");
        let _ = std::fs::remove_file(&csv_path);
        let mut csv = CsvSink::open(&csv_path, csv_run)?;
        for r in lines.iter().flat_map(|l| &l.energy) {
            csv.append(r)?;
        }
        write_front(dir, &info, lines)?;
        Ok(Exports {
            dir: dir.to_path_buf(),
            log: JsonlLog::open(dir)?,
            info,
            csv,
        })
    }

    fn line(&mut self, line: &TrialLine, all: &[TrialLine]) -> Result<(), Error> {
        self.log.append(line)?;
        for r in &line.energy {
            self.csv.append(r)?;
        }
        write_front(&self.dir, &self.info, all)?;
        Ok(())
    }
}

/// Runs (or resumes) a search; returns its summary.
pub fn optimize(cfg: &RunConfig, opts: &OptimizeOptions) -> Result<Summary, Error> {
    let started = Instant::now();
    let dir = &opts.run_dir;
    let hash = meta_hash(cfg)?;
    if !opts.resume
        && dir.exists()
        && std::fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(run_err(
            dir,
            "exists and is not empty: continue it with --resume, or choose another --run-dir",
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| run_err(dir, e.to_string()))?;
    let (url, name) = study_location(cfg, dir);
    let mut store = store::open(&url)?;
    let existing = match store.study(&name) {
        Ok(rec) => Some(rec),
        Err(StoreError::NoSuchStudy { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    if let Some(rec) = &existing
        && rec.study.info.meta_hash != hash
    {
        return Err(run_err(
            dir,
            format!(
                "study \"{name}\" in {} was started with a different configuration (only [search] trials, wall_time_s, energy_budget_kwh, emissions_budget_kg and workers, and [study] may change); start a new study with another [study] name or --run-dir",
                store.url()
            ),
        ));
    }
    let legacy = existing.is_none() && opts.resume && dir.join(store::TRIALS).exists();

    let Setup {
        data,
        space,
        tracker,
        device,
    } = Setup::of(cfg, &opts.config_path)?;
    let default_config = space.default_config();
    if !opts.quiet {
        for note in tracker.notes() {
            eprintln!("energy: {note}");
        }
        if let Some(d) = &data {
            if let Some(note) = &d.load_note {
                eprintln!("data: {note}");
            }
            eprintln!("data: {}", d.describe());
        }
    }
    let search_window = tracker.start("search")?;
    let multi = (!opts.quiet).then(MultiProgress::new);
    let workers = cfg.search.workers.max(1);
    let previous_reference = existing
        .as_ref()
        .map(|r| r.study.info.constraint_reference.clone())
        .or_else(|| {
            legacy
                .then(|| store::read_run_info(dir).ok())
                .flatten()
                .map(|i| i.constraint_reference)
        });
    let constraints = match (&data, device) {
        (Some(data), Some(device)) if !cfg.constraints.is_empty() => constraints_of(
            cfg,
            data,
            &default_config,
            previous_reference.as_ref(),
            &tracker,
            device,
        )?,
        _ => Constraints::default(),
    };
    let objective = Objective {
        cfg,
        data: data.as_ref(),
        tracker: &tracker,
        checkpoints: dir.join("checkpoints"),
        config_path: &opts.config_path,
        workers,
        device,
        training_energy: Arc::new(Mutex::new(HashMap::new())),
        constraints,
    };
    let info = objective.run_info(&default_config, hash)?;
    let n_objectives = info.objectives.len();
    let make_smbo = || {
        optimizer_of(
            cfg,
            space.clone(),
            n_objectives,
            data.as_ref(),
            &objective.constraints,
            &opts.config_path,
        )
    };
    let record = match existing {
        Some(rec) => rec,
        None => {
            let new = new_study(cfg, &name, info.clone(), data.as_ref());
            let events = if legacy {
                legacy_events(dir, make_smbo()?)?
            } else {
                Vec::new()
            };
            store.create_study(&new)?;
            if legacy {
                store.import(&name, &events)?;
                eprintln!(
                    "{}: converted to a study store ({EMBEDDED_DB} inside it): {} events imported from {} and {}; those files are kept (trials.jsonl is now written from the store)",
                    dir.display(),
                    events.len(),
                    store::TRIALS,
                    store::ASKS
                );
            }
            store.study(&name)?
        }
    };
    let replica = Replica::new(
        make_smbo()?,
        Some((default_config.clone(), f64::from(cfg.fidelity.max_epochs))),
    );
    let csv_run = crate::energy::RunInfo {
        project_name: "dsnn-hpo".into(),
        run_id: info.meta_hash.clone(),
        experiment_id: cfg.name.clone().unwrap_or_else(|| "optimize".into()),
    };
    let leases = record.study.leases;
    // Declared before the executor, whose line callback writes to it.
    let mut exports: Option<Exports>;
    let mut exec = Executor::new(
        store,
        name.clone(),
        leases,
        replica,
        objective.checkpoints.clone(),
        Box::new(|_, _| Ok(())),
    );
    exec.sync()?;
    for (k, l) in exec.replica.lines.iter().enumerate() {
        objective.remember_training(l, &exec.replica.lines[..=k]);
    }
    exports = Some(Exports::open(
        dir,
        record.study.info.clone(),
        csv_run,
        &exec.replica.lines,
    )?);
    let requeued = exec.requeue_dead_local()?;
    if requeued > 0 && !opts.quiet {
        eprintln!("{requeued} trial(s) of a stopped process on this host run again");
    }
    exec.on_line = Box::new(|line, all| {
        objective.remember_training(line, all);
        match exports.as_mut() {
            Some(e) => e.line(line, all),
            None => Ok(()),
        }
    });
    let limits = Limits {
        wall_time_s: cfg.search.wall_time_s,
        energy_budget_kwh: cfg.search.energy_budget_kwh,
        emissions_budget_kg: cfg.search.emissions_budget_kg,
        max_trials: None,
    };
    let stop = objective.work(&mut exec, &limits, multi)?;
    let lines = exec.replica.lines.clone();
    if stop == StopReason::TrialsDone {
        exec.store.drop_checkpoints(&name)?;
    }
    drop(exec);
    let search_energy = tracker.stop(search_window)?;
    let failed = lines
        .iter()
        .filter(|l| l.status == TrialStatus::Failed)
        .count();
    if !lines.is_empty() && failed == lines.len() {
        let reasons: Vec<&str> = lines.iter().filter_map(|l| l.reason.as_deref()).collect();
        return Err(run_err(
            dir,
            format!(
                "every trial failed ({} of {}); first reason: {}",
                failed,
                lines.len(),
                reasons.first().copied().unwrap_or("unknown")
            ),
        ));
    }
    if stop != StopReason::Interrupted {
        let _ = std::fs::remove_dir_all(dir.join("checkpoints"));
    }
    let front = front_of(&lines);
    let (energy_kwh, emissions_kg) = measured_energy(&lines);
    let summary = Summary {
        trials: lines.iter().filter(|l| !l.baseline).count(),
        baseline: lines.iter().rev().find(|l| l.baseline).map(|l| l.id),
        failed,
        infeasible: lines
            .iter()
            .filter(|l| l.status == TrialStatus::Infeasible)
            .count(),
        stop,
        front: front.iter().map(|t| t.id).collect(),
        hypervolume: normalised_hypervolume(&lines, &front),
        cost: crate::report::CostReport::of(&lines),
        wall_s: started.elapsed().as_secs_f64(),
        search_energy,
        trials_energy_kwh: energy_kwh,
        trials_emissions_kg: emissions_kg,
    };
    store::write_atomic(
        &dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    Ok(summary)
}

/// How `dsnn-hpo worker` was asked to run.
pub struct WorkerOptions {
    pub storage: String,
    pub study: String,
    pub max_trials: Option<usize>,
    /// Overrides the study's `device` on this machine.
    pub device: Option<String>,
    /// Overrides the study's `data.path` on this machine.
    pub data_path: Option<PathBuf>,
    /// Local trials at once on this machine.
    pub workers: usize,
    /// Local folder for saved states (default: a temporary folder of this process).
    pub checkpoints: Option<PathBuf>,
    pub quiet: bool,
}

/// What a worker did.
#[derive(Debug, Clone)]
pub struct WorkerReport {
    pub stop: StopReason,
    /// Trials of the study finished (by every process).
    pub study_trials: usize,
}

/// Joins a study and evaluates its trials until it is done (or `max_trials` are finished here).
pub fn work(opts: &WorkerOptions) -> Result<WorkerReport, Error> {
    let mut store = store::open(&opts.storage)?;
    let record: StudyRecord = store.study(&opts.study)?;
    let where_ = PathBuf::from(format!("study \"{}\" in {}", opts.study, store.url()));
    let version = env!("CARGO_PKG_VERSION");
    if record.study.version != version {
        return Err(run_err(
            &where_,
            format!(
                "was created by dsnn-hpo {}, this is {version}: run the workers with the study's release",
                record.study.version
            ),
        ));
    }
    let mut sets = Vec::new();
    if let Some(d) = &opts.device {
        sets.push(format!("device={d}"));
    }
    if let Some(p) = &opts.data_path {
        sets.push(format!("data.path={}", p.display()));
    }
    let cfg = RunConfig::from_str_with_sets(&record.study.info.config_toml, &where_, &sets)?;
    let Setup {
        data,
        space,
        tracker,
        device,
    } = Setup::of(&cfg, &where_)?;
    if let (Some(d), Some(expected)) = (&data, &record.study.data_fingerprint) {
        let got = d.fingerprint();
        if got != *expected {
            return Err(run_err(
                &where_,
                format!(
                    "this machine's data differ from the study's: the study trains on [{expected}], this worker read [{got}]; give the same data with --data-path"
                ),
            ));
        }
    }
    let mut constraints = Constraints::new(cfg.constraints.clone());
    constraints.reference = record.study.info.constraint_reference.clone();
    // Without a folder given, a new one no other process ever had: a folder named by the process
    // id alone was found again, with a killed worker's saved states and progress in it, by a
    // later worker that got the same id, which then continued other trials' states.
    let (checkpoints, scratch) = match &opts.checkpoints {
        Some(dir) => (dir.clone(), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix(&format!(
                    "dsnn-hpo-{}-",
                    opts.study.replace(['/', '\\'], "_")
                ))
                .tempdir()
                .map_err(|e| Error::Run {
                    path: std::env::temp_dir(),
                    message: format!("cannot create this worker's folder for saved states: {e}"),
                })?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let workers = opts.workers.max(1);
    let objective = Objective {
        cfg: &cfg,
        data: data.as_ref(),
        tracker: &tracker,
        checkpoints: checkpoints.clone(),
        config_path: &where_,
        workers,
        device,
        training_energy: Arc::new(Mutex::new(HashMap::new())),
        constraints,
    };
    let smbo = optimizer_of(
        &cfg,
        space.clone(),
        record.study.info.objectives.len(),
        data.as_ref(),
        &objective.constraints,
        &where_,
    )?;
    let replica = Replica::new(
        smbo,
        Some((
            record.study.info.default_config.clone(),
            f64::from(cfg.fidelity.max_epochs),
        )),
    );
    let mut exec = Executor::new(
        store,
        opts.study.clone(),
        record.study.leases,
        replica,
        checkpoints.clone(),
        Box::new(|line, all| {
            objective.remember_training(line, all);
            Ok(())
        }),
    );
    exec.sync()?;
    exec.requeue_dead_local()?;
    let limits = Limits {
        max_trials: opts.max_trials,
        energy_budget_kwh: cfg.search.energy_budget_kwh,
        emissions_budget_kg: cfg.search.emissions_budget_kg,
        wall_time_s: None,
    };
    let multi = (!opts.quiet).then(MultiProgress::new);
    let stop = objective.work(&mut exec, &limits, multi)?;
    let study_trials = exec.replica.lines.len();
    if stop == StopReason::TrialsDone {
        // Nothing can be continued any more: the saved states go.
        exec.store.drop_checkpoints(&opts.study)?;
    }
    drop(exec);
    // The scratch folder goes with this process's work (a killed worker leaves it behind).
    drop(scratch);
    Ok(WorkerReport { stop, study_trials })
}
